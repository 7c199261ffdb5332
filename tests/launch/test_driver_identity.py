"""A sweep's driver is known by more than its PID: `hamsweep cancel` never signals a process that
fails the check, and `status` of a folder whose driver ran on another machine goes by its heartbeat.
A real finished sweep, copies of its folder with the launch record edited, the real CLI, and a real
`sleep` standing in for the program a PID went to after the driver ended."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import finished_sweep, hamsweep, write_spec

from hamsweep.launch import LAUNCH
from hamsweep.launch._base import read_launch
from hamsweep.launch._driver import HEARTBEAT, SILENT_S, start_ticks
from hamsweep.sweep.dashboard import STATE_FILE

pytestmark = pytest.mark.timeout(600)

HOUR_AGO = 3600.0  # seconds: far past SILENT_S, and "1 h" for as long as a test runs


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local sweep of one short trial, run to its end by `hamsweep run`."""
    root = tmp_path_factory.mktemp("identity")
    spec = write_spec(
        root / "one.yaml",
        train={"epochs": 2},
        scheduler="none",
        confirm={"top_k": 0},
        search={"num_samples": 1, "max_concurrent": 1},
    )
    out, _ = finished_sweep(spec, root / "out")
    return out


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen]:
    """Somebody else's process: it must outlive every `cancel` here."""
    proc = subprocess.Popen(["sleep", "600"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def _copy(src: Path, dst: Path, *, heard_ago: float | None = None, **fields: object) -> Path:
    """A copy of the sweep folder ``src`` whose launch record has ``fields`` changed (None: removed,
    as in a record of an older hamsweep); ``heard_ago``: its driver's files last written that many
    seconds ago."""
    shutil.copytree(src, dst, symlinks=True)  # copy2: the files keep their times
    record = json.loads((dst / LAUNCH).read_text())
    # the record of this folder, not of a copy's original (that case is tested on its own)
    record["out"] = str(dst)
    record.update({k: v for k, v in fields.items() if v is not None})
    for key in [k for k, v in fields.items() if v is None]:
        record.pop(key, None)
    if heard_ago is not None:
        then = time.time() - heard_ago
        record["launched"] = then - HOUR_AGO  # long before: the files are the last word
        for name in (STATE_FILE, HEARTBEAT):
            if (dst / name).exists():
                os.utime(dst / name, (then, then))
    (dst / LAUNCH).write_text(json.dumps(record))
    return dst


def _boot_id() -> str:
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def test_the_driver_records_its_start_and_token_and_says_when_it_ended(finished):
    record = read_launch(finished)
    assert record.kind == "local" and record.host == socket.gethostname()
    assert record.boot == _boot_id() and record.start_ticks > 0 and len(record.token) == 32
    beat = json.loads((finished / HEARTBEAT).read_text())
    assert beat == {**beat, "token": record.token, "pid": record.pid, "ended": True}
    shown = hamsweep("status", str(finished))
    assert (
        shown.returncode == 0
        and f"ended: driver process {record.pid} on {record.host} has ended" in shown.stdout
    )


@pytest.mark.parametrize(
    "case", ["pid reused", "same start, no token", "older record, silent", "older record, heard"]
)
def test_cancel_never_signals_a_process_that_is_not_the_driver(finished, sleeper, tmp_path, case):
    pid = sleeper.pid
    fields: dict = {
        "pid reused": {"pid": pid},  # the driver's start time and token: the sleep started later
        "same start, no token": {"pid": pid, "boot": _boot_id(), "start_ticks": start_ticks(pid)},
        "older record, silent": {"pid": pid, "boot": None, "start_ticks": None, "token": None},
        "older record, heard": {"pid": pid, "boot": None, "start_ticks": None, "token": None},
    }[case]
    out = _copy(
        finished,
        tmp_path / "copy",
        heard_ago=5.0 if case == "older record, heard" else HOUR_AGO,
        **fields,
    )
    proc = hamsweep("cancel", str(out), timeout=60)
    assert sleeper.poll() is None, f"cancel killed somebody's process: {proc.stdout}{proc.stderr}"
    assert proc.stdout == "" and len(proc.stderr.splitlines()) == 1, proc.stdout + proc.stderr
    # it may be the driver, which status sees alive: refused, not guessed
    if case == "older record, heard":
        assert proc.returncode == 2, proc.stderr
        assert (
            f"names process {pid} but no start time or token" in proc.stderr
            and "not signalled" in proc.stderr
        )
    else:
        assert proc.returncode == 1, proc.stderr
        assert proc.stderr.startswith(
            f"hamsweep: error: the recorded driver is not running: driver process {pid} "
        )
        assert proc.stderr.rstrip().endswith(f"; resume with: hamsweep resume {out}")
    assert not read_launch(out).cancelled


def test_a_finished_folder_from_another_host_is_not_running_and_its_clock_stands_still(
    finished, tmp_path
):
    # no heartbeat: as a driver killed there, or one of an older hamsweep, leaves the folder
    out = _copy(finished, tmp_path / "copy", host="elsewhere.example", heard_ago=HOUR_AGO)
    (out / HEARTBEAT).unlink()
    first = hamsweep("status", str(out), timeout=60)
    time.sleep(2)
    second = hamsweep("status", str(out), timeout=60)
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    pid = read_launch(out).pid
    assert (
        f"ended: driver process {pid} on elsewhere.example: not running (last heard 1 h ago)"
        in first.stdout
    ), first.stdout
    assert first.stdout == second.stdout  # the dashboard's elapsed time does not run on
    watched = hamsweep("status", str(out), "--watch", timeout=60)
    assert watched.returncode == 0 and "not running (last heard 1 h ago)" in watched.stdout, (
        watched.stdout + watched.stderr
    )
    cancelled = hamsweep("cancel", str(out), timeout=60)
    assert cancelled.returncode == 1 and "the recorded driver is not running" in cancelled.stderr, (
        cancelled.stderr
    )


def test_a_driver_on_another_host_is_judged_by_its_heartbeat(finished, tmp_path):
    # the heartbeat the driver wrote on its way out: ended at once, however recent
    ended = _copy(finished, tmp_path / "ended", host="elsewhere.example", heard_ago=5.0)
    shown = hamsweep("status", str(ended), timeout=60)
    assert re.search(r"on elsewhere\.example has ended \(last heard \d+ s ago\)", shown.stdout), (
        shown.stdout
    )
    # a heartbeat of a running driver, within SILENT_S: running, and not cancellable from here
    alive = _copy(finished, tmp_path / "alive", host="elsewhere.example", heard_ago=SILENT_S / 2)
    beat = json.loads((alive / HEARTBEAT).read_text())
    stamp = os.stat(alive / HEARTBEAT).st_mtime
    (alive / HEARTBEAT).write_text(json.dumps({**beat, "ended": False}))
    os.utime(alive / HEARTBEAT, (stamp, stamp))
    shown = hamsweep("status", str(alive), timeout=60)
    assert (
        shown.returncode == 0
        and "running: driver process" in shown.stdout
        and "on elsewhere.example (last heard 1 min ago" in shown.stdout
    )
    refused = hamsweep("cancel", str(alive), timeout=60)
    assert refused.returncode == 2 and "run hamsweep cancel there" in refused.stderr, refused.stderr
    # the same heartbeat past SILENT_S: not running
    old = time.time() - SILENT_S - 30
    os.utime(alive / HEARTBEAT, (old, old))
    os.utime(alive / STATE_FILE, (old, old))
    shown = hamsweep("status", str(alive), timeout=60)
    assert "on elsewhere.example: not running (last heard 2 min ago)" in shown.stdout, shown.stdout


_DRIVER = """
import sys, time
from pathlib import Path
from hamsweep.launch._base import Launch, write_launch
from hamsweep.launch._driver import carrying
out = Path(sys.argv[1])
with carrying(out, Launch(kind="local", out=str(out))) as record:
    write_launch(out, record)
    print("carrying", flush=True)
    try:
        time.sleep(600)
    except KeyboardInterrupt:
        sys.exit(130)
"""


def test_a_copy_of_a_running_folder_never_cancels_the_original_driver(finished, tmp_path):
    """The copy's record names the original's driver, token and all (cp -r of a running sweep, to
    look at it elsewhere): only `cancel` of the original folder stops it."""
    original = tmp_path / "original"
    shutil.copytree(finished, original, symlinks=True)
    driver = subprocess.Popen(
        [sys.executable, "-c", _DRIVER, str(original)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert driver.stdout.readline().strip() == "carrying"
        copy = tmp_path / "copy"
        shutil.copytree(original, copy, symlinks=True)
        shown = hamsweep("status", str(copy))
        assert shown.returncode == 0 and f"a copy of {original}" in shown.stdout, (
            shown.stdout + shown.stderr
        )
        refused = hamsweep("cancel", str(copy))
        assert refused.returncode == 1 and f"a copy of {original}" in refused.stderr, refused.stderr
        # the original's driver runs on
        assert len(refused.stderr.strip().splitlines()) == 1 and driver.poll() is None
        assert "copy_of" not in json.loads((copy / LAUNCH).read_text())
        stopped = hamsweep("cancel", str(original))
        assert stopped.returncode == 0, stopped.stderr
        assert driver.wait(timeout=30) == 130  # Ctrl-C'd, as a driver is
    finally:
        driver.kill()
        driver.wait()
