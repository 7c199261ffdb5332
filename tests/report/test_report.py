"""``hamsweep report``: of a finished sweep with a confirm stage (``conftest.confirmed_sweep``), of
a folder with failed, stopped and running trials, of an empty one; the page opened in a real
headless Chromium with the network off; the figures' content read from their matplotlib objects; the
Optuna study as Optuna's own tools see it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import CONFIRM_CLASSES, CONFIRM_SAMPLES, REPO, hamsweep

from hamsweep import rundir
from hamsweep.report import build_report
from hamsweep.report.data import load
from hamsweep.report.figures import FIGURES, class_state, fairness, per_class, progress
from hamsweep.results import store as results
from hamsweep.results.study import open_study

TITLES = 10  # figures on the page


@pytest.fixture(scope="module")
def report(confirmed_sweep: tuple[Path, subprocess.CompletedProcess]) -> tuple[Path, Path]:
    out, _ = confirmed_sweep
    proc = hamsweep("report", str(out))
    assert proc.returncode == 0, proc.stderr
    return out, out / "report" / "index.html"


def test_the_report_is_one_self_contained_page_and_each_figure_as_png_and_pdf(report):
    out, index = report
    page = index.read_text()
    # nothing from the network
    assert "http://" not in page and "https://" not in page and "<script" not in page
    assert page.count("data:image/png;base64,") == TITLES
    for f in FIGURES:
        name = f.__name__
        assert (out / "report" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
        assert (out / "report" / f"{name}.pdf").read_bytes()[:4] == b"%PDF"
    assert "Confirmed on the test split" in page and "finished" in page


def test_a_real_browser_loads_every_image_offline(report, tmp_path):
    _, index = report
    chromium = subprocess.run(
        [str(REPO / "scripts" / "chromium.sh")], capture_output=True, text=True, check=True
    ).stdout.strip()
    harness = tmp_path / "harness.html"
    harness.write_text(f"""<!DOCTYPE html><html><body><pre id="result">pending</pre>
<iframe id="f" width="1200" height="900" src="{index.as_uri()}"></iframe><script>
document.getElementById("f").addEventListener("load", function () {{
  var d = this.contentDocument;
  document.getElementById("result").textContent = JSON.stringify({{
    widths: Array.from(d.images).map(function (i) {{ return i.complete ? i.naturalWidth : -1; }}),
    titles: Array.from(d.querySelectorAll("figure h2")).map(function (h) {{ \
return h.textContent; }})}});
}});</script></body></html>""")
    offline = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--proxy-server=127.0.0.1:9",
        "--allow-file-access-from-files",
    ]
    dom = subprocess.run(
        [chromium, *offline, "--virtual-time-budget=10000", "--dump-dom", harness.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    found = json.loads(dom.split('<pre id="result">', 1)[1].split("</pre>", 1)[0])
    assert len(found["widths"]) == TITLES and all(w > 0 for w in found["widths"]), found
    page = index.read_text()
    assert len(found["titles"]) == TITLES and all(t in page for t in found["titles"])
    shot = tmp_path / "report.png"
    subprocess.run(
        [chromium, *offline, f"--screenshot={shot}", "--window-size=1200,2400", index.as_uri()],
        capture_output=True,
        timeout=120,
        check=True,
    )
    assert shot.read_bytes()[:4] == b"\x89PNG"


def test_figures_hold_what_their_titles_say(confirmed_sweep):
    out, _ = confirmed_sweep
    d = load(out)
    lines = per_class(d).figure.axes[0].get_lines()
    # PGD-AT and 2 configs
    assert len(lines) == 3 and all(len(line.get_xdata()) == CONFIRM_CLASSES for line in lines)
    assert next(line.get_label() for line in lines) == "PGD-AT"
    left = fairness(d).figure.axes[0]
    assert len(left.collections[0].get_offsets()) == CONFIRM_SAMPLES  # one point per search trial
    marks = progress(d).figure.axes[0].collections
    assert sum(len(c.get_offsets()) for c in marks) == CONFIRM_SAMPLES
    # the best search trial's per-class hard fraction, a line per class, from its Parquet rows
    (panel,) = class_state(d).figure.axes
    best = max(
        (t for t in results.read_table(out, results.TRIALS).to_pylist() if t["role"] == "search"),
        key=lambda t: (t["best_objective"], -t["number"]),
    )
    mine = [
        r for r in pq.read_table(out / "class_state").to_pylist() if r["trial"] == best["trial"]
    ]
    lines = panel.get_lines()
    assert panel.get_title() == "hard_fraction" and len(lines) == len({r["class_id"] for r in mine})
    for c, line in enumerate(lines):
        rows = sorted((r for r in mine if r["class_id"] == c), key=lambda r: r["epoch"])
        assert list(line.get_xdata()) == [r["epoch"] for r in rows]
        assert list(line.get_ydata()) == pytest.approx([100 * r["hard_fraction"] for r in rows])


def test_the_study_is_a_first_class_optuna_study(confirmed_sweep):
    out, _ = confirmed_sweep
    study = open_study(out)
    assert study.metric_names == [load(out).objective]  # optuna-dashboard names it
    assert study.study_name.startswith("tiny-") and study.study_name != "tiny"
    trials = {r["trial"]: r for r in results.read_table(out, results.TRIALS).to_pylist()}
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(complete) == CONFIRM_SAMPLES
    for t in complete:
        attrs = t.user_attrs
        row = trials[attrs["tune_trial"]]
        assert (
            attrs["role"] == "search"
            and row["number"] == t.number
            and attrs["status"] == t.state.name
        )
        assert attrs["status_reason"].startswith("ran all") and attrs["checkpoint"].startswith(
            f"ray/trial_{row['trial']}/checkpoint_"
        )
    assert set(study.user_attrs["trunks"].values()) == {
        r["trial"] for r in trials.values() if r["role"] == "trunk" and r["stage"] == "search"
    }
    assert set(study.user_attrs["confirm"]) == {
        r["trial"] for r in trials.values() if r["stage"] == "confirm"
    }


def test_a_folder_with_failed_stopped_and_running_trials_is_a_snapshot(confirmed_sweep, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(confirmed_sweep[0], out)
    rows = results.read_table(out, results.TRIALS).to_pylist()
    search = [r for r in rows if r["stage"] == "search" and r["role"] == "search"]
    for r, status in zip(search, ("failed", "stopped", "running")):
        r["status"] = status
    results.PartWriter(
        out, {results.TRIALS: results.read_table(out, results.TRIALS).schema}
    ).append(results.TRIALS, search)
    index = build_report(out, tmp_path / "rep")
    page = index.read_text()
    assert (
        "running: a snapshot of what is there" in page
        and "1 failed" in page
        and "1 stopped" in page
    )
    labels = [c.get_label() for c in progress(load(out)).figure.axes[0].collections]
    assert any(lab.startswith("failed (1)") for lab in labels) and any(
        lab.startswith("stopped (1)") for lab in labels
    )


def test_an_empty_folder_is_one_clear_line(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = hamsweep("report", str(empty))
    assert (
        proc.returncode == 2
        and proc.stderr.count("\n") == 1
        and "holds no spec.yaml" in proc.stderr
    )
    rundir.write_spec(empty, {"name": "nothing"})
    proc = hamsweep("report", str(empty))
    assert (
        proc.returncode == 2
        and proc.stderr.count("\n") == 1
        and "holds no trials yet" in proc.stderr
    ), proc.stderr
    assert not (empty / "report").exists()


def test_report_imports_no_ray():
    code = (
        "import sys, hamsweep.report, hamsweep.report.figures, hamsweep.report.page, hamsweep.cli; "
        "assert 'ray' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
