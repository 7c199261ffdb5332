"""The Optuna study tells the same story as hamsweep: each finished trial carries the objective
hamsweep ranks it by (``best_objective``), the PGD-AT baseline is in the journal (its own study and
the search study's user attributes) without TPE learning from it, and optuna-dashboard, the real
one, serves both to a real headless Chromium. Unit tests drive the searcher without Ray; the last
tests read the shared ``confirmed_sweep`` back from Parquet with pyarrow."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
from conftest import REPO

from hamsweep.results import store as results
from hamsweep.results.study import (
    BASELINE_SUFFIX,
    JOURNAL,
    journal_storage,
    open_baseline_study,
    open_study,
    study_name,
    tell_stopped,
)
from hamsweep.spec import SweepSpec, validate
from hamsweep.sweep.search import BEST, OBJECTIVE, make_searcher
from hamsweep.sweep.trunk import epoch_dir, plan

PARAMS = {
    "ham.warmup_epochs": {"int": [1, 3], "default": 2},
    "ham.discard_threshold": {"uniform": [0.0, 0.9], "default": 0.0},
}


def spec(**search) -> SweepSpec:
    return validate(
        SweepSpec,
        {
            "name": "s",
            "train": {"epochs": 6},
            "ham": {"warmup_epochs": 2},
            "search": {"params": PARAMS, **search},
        },
    )


def searcher(folder: Path, **search):
    """The searcher of ``spec(**search)`` with its trunk (Tune trial ``trunk``) handed out and at
    every warm-up epoch, so that no proposal waits for it."""
    s = make_searcher(spec(**search), folder)
    (trunk,) = plan(s.spec).trunks
    for w in (1, 2, 3):
        epoch_dir(folder, trunk.key, w).mkdir(parents=True, exist_ok=True)
    assert s.suggest("trunk")["role"] == "trunk"
    return s


def epochs(s, tid: str, objectives: list[float], first: int = 1) -> float:
    """Results of epochs ``first``.. with these objectives; returns the best, as
    trial.py reports it."""
    best = 0.0
    for epoch, value in enumerate(objectives, start=first):
        best = max(best, value)
        s.on_trial_result(tid, {OBJECTIVE: value, BEST: best, "best_epoch": epoch, "epoch": epoch})
    return best


def test_every_finished_trial_carries_the_objective_hamsweep_ranks_it_by(tmp_path):
    s = searcher(tmp_path, start_with_defaults=False)
    for i in range(3):
        s.suggest(f"t{i}")
    # ASHA stops it at epoch 3: its last epoch is not its best
    best = epochs(s, "t0", [0.2, 0.658, 0.458])
    s.on_trial_complete("t0", {OBJECTIVE: 0.458, BEST: best, "best_epoch": 2, "epoch": 3})
    epochs(s, "t1", [0.1, 0.3, 0.4, 0.5, 0.6, 0.667])
    s.on_trial_complete("t1", {OBJECTIVE: 0.667, BEST: 0.667, "best_epoch": 6, "epoch": 6})
    epochs(s, "t2", [0.3])
    s.on_trial_complete("t2", {OBJECTIVE: 0.0, BEST: 0.3, "epoch": 2, "failed": "diverged: nan"})
    pruned, complete, failed = open_study(tmp_path).trials
    # Optuna's rule for PRUNED (tell takes no value): the last intermediate value;
    # hamsweep's number beside it
    assert (pruned.state.name, pruned.value, pruned.intermediate_values[3]) == (
        "PRUNED",
        0.458,
        0.458,
    )
    assert (pruned.user_attrs["best_objective"], pruned.user_attrs["best_epoch"]) == (0.658, 2)
    assert (complete.state.name, complete.value, complete.user_attrs["best_objective"]) == (
        "COMPLETE",
        0.667,
        0.667,
    )
    # its last good epoch's
    assert (failed.state.name, failed.value, failed.user_attrs["best_objective"]) == (
        "FAIL",
        None,
        0.3,
    )


def _drive(folder: Path, samples: int) -> None:
    """A TPE search of ``samples`` trials, every other one stopped early past its best epoch; then
    its trunk ends."""
    s = searcher(folder, num_samples=samples + 3, max_concurrent=samples + 3)
    for i in range(samples):
        c = s.suggest(f"t{i}")
        curve = [c["ham.discard_threshold"] * e / 6 for e in range(c["ham.warmup_epochs"] + 1, 7)]
        # every other trial stopped at its second epoch, past its best
        stop = len(curve) if i % 2 else 2
        curve = [*curve[: stop - 1], curve[stop - 1] / 4] if not i % 2 else curve
        best = epochs(s, f"t{i}", curve, first=c["ham.warmup_epochs"] + 1)
        s.on_trial_complete(
            f"t{i}",
            {OBJECTIVE: curve[-1], BEST: best, "epoch": c["ham.warmup_epochs"] + len(curve)},
        )
    s.on_trial_complete("trunk", {OBJECTIVE: 0.5, BEST: 0.692, "best_epoch": 5, "epoch": 6})


def _added(op: dict) -> bool:
    """A journal record this change writes: a trial's best_objective/best_epoch, the study's
    baselines, the baseline study (study id 1) and its trial."""
    attrs = set(op.get("user_attr", {}))
    return (
        bool(attrs & {"best_objective", "best_epoch", "baselines", "baseline_objective"})
        or op.get("study_id") == 1
        or str(op.get("study_name", "")).endswith(BASELINE_SUFFIX)
    )


def test_what_tpe_learns_from_is_what_it_learnt_before(tmp_path):
    """The next proposals from the journal as written equal those from the same journal without
    anything this adds (trial user attributes, the baseline study, the study's ``baselines``)."""
    ours, bare = tmp_path / "ours", tmp_path / "bare"
    ours.mkdir()
    _drive(ours, 12)
    name = study_name(ours)
    lines = (ours / JOURNAL).read_text().splitlines(keepends=True)
    kept = [ln for ln in lines if not _added(json.loads(ln))]
    # something was stripped (the baseline trial comes last: no trial id moves)
    assert len(kept) < len(lines)
    bare.mkdir()
    (bare / JOURNAL).write_text("".join(kept))
    assert {
        s.study_name for s in optuna.get_all_study_summaries(journal_storage(bare / JOURNAL))
    } == {name}
    ours_next, bare_next = (searcher(f, num_samples=20, max_concurrent=20) for f in (ours, bare))
    a = [ours_next.suggest(f"m{i}") for i in range(4)]
    b = [bare_next.suggest(f"m{i}") for i in range(4)]
    assert [{k: c[k] for k in PARAMS} for c in a] == [{k: c[k] for k in PARAMS} for c in b]


def test_the_baseline_is_in_the_journal_and_not_a_search_trial(tmp_path):
    _drive(tmp_path, 4)
    study, baseline = open_study(tmp_path), open_baseline_study(tmp_path)
    assert (
        study_name(tmp_path) == study.study_name
        and baseline.study_name == study.study_name + BASELINE_SUFFIX
    )
    (trunk,) = baseline.trials
    assert (
        trunk.state.name,
        trunk.value,
        trunk.user_attrs["tune_trial"],
        trunk.user_attrs["role"],
    ) == ("COMPLETE", 0.692, "trunk", "trunk")
    assert baseline.metric_names == study.metric_names and baseline.directions == study.directions
    (entry,) = study.user_attrs["baselines"].values()
    assert (entry["tune_trial"], entry["best_objective"], entry["best_epoch"]) == (
        "trunk",
        0.692,
        5,
    )
    assert study.user_attrs["baseline_objective"] == 0.692
    # the trunk teaches TPE nothing
    assert all(t.user_attrs["role"] == "search" for t in study.trials)


def test_a_trunk_told_twice_is_one_baseline_trial_and_a_failed_one_fails(tmp_path):
    s = searcher(tmp_path)
    s.on_trial_complete("trunk", {OBJECTIVE: 0.5, BEST: 0.6, "epoch": 6})
    # Tune re-runs it after a resume
    s.on_trial_complete("trunk", {OBJECTIVE: 0.5, BEST: 0.6, "epoch": 6})
    assert [t.value for t in open_baseline_study(tmp_path).trials] == [0.6]
    other = tmp_path / "other"
    other.mkdir()
    s = searcher(other)
    s.on_trial_complete("trunk", {"epoch": 3}, error=True)
    (t,) = open_baseline_study(other).trials
    assert (t.state.name, t.value, t.user_attrs["status_reason"]) == (
        "FAIL",
        None,
        "error: its worker failed",
    )
    assert (
        "baselines" not in open_study(other).user_attrs
        and "baseline_objective" not in open_study(other).user_attrs
    )


def test_a_trial_the_budget_stopped_carries_its_best_objective_too(tmp_path):
    s = searcher(tmp_path, start_with_defaults=False)
    s.suggest("t0")
    # Tune ends it without telling the searcher: the recorder tells Optuna
    epochs(s, "t0", [0.4, 0.2])
    tell_stopped(
        open_study(tmp_path),
        0,
        {"status": "PRUNED", "best_objective": 0.4, "best_epoch": 1, "checkpoint": None},
    )
    (t,) = open_study(tmp_path).trials
    assert (t.state.name, t.value, t.user_attrs["best_objective"], t.user_attrs["best_epoch"]) == (
        "PRUNED",
        0.2,
        0.4,
        1,
    )
    assert "checkpoint" not in t.user_attrs
    tell_stopped(open_study(tmp_path), 0, {"best_objective": 0.9})  # finished: it stays as it is
    assert open_study(tmp_path).trials[0].user_attrs["best_objective"] == 0.4


def test_a_journal_from_before_the_baseline_study_opens(tmp_path):
    # the study of a folder written before this change: the search study alone, no best_objective
    optuna.create_study(
        study_name="old-0123abcd", storage=journal_storage(tmp_path / JOURNAL), direction="maximize"
    )
    assert (
        open_study(tmp_path).study_name == "old-0123abcd" and open_baseline_study(tmp_path) is None
    )


# ---- the shared sweep, read back from Parquet, and optuna-dashboard ----
def _trials(out: Path) -> list[dict]:
    """The trials table: its Parquet parts read by pyarrow (``results.read_table``: one
    row per trial)."""
    return results.read_table(out, results.TRIALS).to_pylist()


def test_the_sweeps_study_values_are_the_parquet_best_objectives(confirmed_sweep):
    out, _ = confirmed_sweep
    rows = {r["trial"]: r for r in _trials(out)}
    study, baseline = open_study(out), open_baseline_study(out)
    search = [t for t in study.trials if t.state.name != "RUNNING"]
    assert search and all(t.user_attrs["role"] == "search" for t in search)
    for t in search:
        row = rows[t.user_attrs["tune_trial"]]
        assert t.user_attrs["best_objective"] == pytest.approx(row["best_objective"], abs=0.0), (
            t.number,
            row,
        )
        if t.state.name == "COMPLETE":
            assert t.value == pytest.approx(row["best_objective"], abs=0.0)
    trunks = [r for r in rows.values() if r["role"] == "trunk" and r["stage"] == "search"]
    assert trunks and baseline is not None
    assert {t.user_attrs["tune_trial"]: t.value for t in baseline.trials} == {
        r["trial"]: r["best_objective"] for r in trunks
    }
    assert {
        v["tune_trial"]: v["best_objective"] for v in study.user_attrs["baselines"].values()
    } == {r["trial"]: r["best_objective"] for r in trunks}
    assert study.user_attrs["baseline_objective"] == max(r["best_objective"] for r in trunks)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def dashboard(confirmed_sweep, tmp_path):
    """optuna-dashboard on a copy of the sweep's journal, on 127.0.0.1; ended by
    its PID afterwards."""
    journal = tmp_path / JOURNAL
    shutil.copy(confirmed_sweep[0] / JOURNAL, journal)
    port = _free_port()
    exe = Path(sys.executable).with_name("optuna-dashboard")
    proc = subprocess.Popen(
        [str(exe), "--host", "127.0.0.1", "--port", str(port), str(journal)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{url}/api/meta", timeout=2).read()
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read()
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


def test_optuna_dashboard_shows_the_baseline_next_to_the_search(
    dashboard, confirmed_sweep, tmp_path
):
    out, _ = confirmed_sweep
    rows = _trials(out)
    (trunk,) = [r for r in rows if r["role"] == "trunk" and r["stage"] == "search"]
    name = open_study(out).study_name
    studies = {s["study_name"]: s for s in _get(f"{dashboard}/api/studies")["study_summaries"]}
    assert set(studies) == {name, name + BASELINE_SUFFIX}
    detail = _get(f"{dashboard}/api/studies/{studies[name + BASELINE_SUFFIX]['study_id']}")
    (served,) = detail["trials"]
    assert served["state"] == "Complete" and served["values"] == [trunk["best_objective"]]
    search = _get(f"{dashboard}/api/studies/{studies[name]['study_id']}")
    attrs = {a["key"]: a["value"] for a in studies[name]["user_attrs"]}
    assert (
        json.loads(attrs["baselines"])[trunk["trunk_key"]]["best_objective"]
        == trunk["best_objective"]
    )
    assert all(any(a["key"] == "best_objective" for a in t["user_attrs"]) for t in search["trials"])
    # the pages, rendered by a real browser with the network off but for the dashboard on 127.0.0.1:
    # the baseline study's trial (its value) and the search study
    # (baseline_objective beside Best Trial)
    chromium = subprocess.run(
        [str(REPO / "scripts" / "chromium.sh")], capture_output=True, text=True, check=True
    ).stdout.strip()
    offline = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--proxy-server=127.0.0.1:9",
        "--proxy-bypass-list=127.0.0.1",
        "--virtual-time-budget=20000",
    ]
    pages = {
        "baseline": (
            f"studies/{studies[name + BASELINE_SUFFIX]['study_id']}/trials",
            ["Value", "best_objective"],
        ),
        "search": (
            f"studies/{studies[name]['study_id']}",
            ["Best Trial", "Study User Attributes", "baseline_objective"],
        ),
    }
    for label, (page, words) in pages.items():
        dom = subprocess.run(
            [chromium, *offline, "--dump-dom", f"{dashboard}/dashboard/{page}"],
            capture_output=True,
            text=True,
            timeout=180,
        ).stdout
        assert all(w in dom for w in words) and str(trunk["best_objective"]) in dom, (
            label,
            dom[-2000:],
        )
        shot = tmp_path / f"{label}.png"  # for a person to look at: pytest --basetemp=DIR keeps it
        subprocess.run(
            [
                chromium,
                *offline,
                f"--screenshot={shot}",
                "--window-size=1400,1600",
                f"{dashboard}/dashboard/{page}",
            ],
            capture_output=True,
            timeout=180,
            check=True,
        )
        assert shot.read_bytes()[:4] == b"\x89PNG"
