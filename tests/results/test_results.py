from __future__ import annotations

from dataclasses import replace

import pyarrow as pa
import pyarrow.parquet as pq
from conftest import epoch_record

from hamsweep.results.read import connect, read_table
from hamsweep.results.schema import CLASSES, EPOCH_SCHEMA, EPOCHS, class_rows, epoch_rows
from hamsweep.results.writer import PartWriter, compact


def test_parts_are_deduplicated_newest_first_and_compacted(tmp_path):
    w = PartWriter(tmp_path)
    # epoch 2 written twice, as after a crash
    for epoch, correct in [(1, (3, 1)), (2, (2, 2)), (2, (4, 0))]:
        rec = epoch_record(epoch, correct)
        w.append(EPOCHS, epoch_rows("t", rec, 0.2))
        w.append(CLASSES, class_rows("t", rec, ["a", "b"]))
    epochs = read_table(tmp_path, EPOCHS)
    assert epochs.column("epoch").to_pylist() == [1, 2]
    assert epochs.column("robust_worst").to_pylist() == [0.25, 0.0]  # the newest epoch-2 row won
    assert epochs.column("robust_worst_class").to_pylist() == [1, 1]
    assert read_table(tmp_path, CLASSES).num_rows == 2 * 2 * 2
    compact(tmp_path)
    assert len(list((tmp_path / EPOCHS).glob("part-*.parquet"))) == 1
    assert read_table(tmp_path, EPOCHS).equals(epochs)
    assert pq.read_table(tmp_path / EPOCHS).num_rows == 2
    con = connect(tmp_path)
    assert (
        con.execute(
            "SELECT count(*) FROM classes WHERE attack = 'pgd20' AND correct < n"
        ).fetchone()[0]
        == 3
    )


def test_empty_folder_reads_as_empty_tables(tmp_path):
    assert read_table(tmp_path, EPOCHS).num_rows == 0
    assert not any(tmp_path.iterdir())


def test_no_temporary_files_are_left(tmp_path):
    PartWriter(tmp_path).append(EPOCHS, epoch_rows("t", epoch_record(1), 0.2))
    assert [p.name.startswith("part-") for p in (tmp_path / EPOCHS).iterdir()] == [True]


def test_a_newer_row_replaces_the_whole_row_nulls_included(tmp_path):
    import pyarrow as pa

    from hamsweep.results.schema import TRIALS, trials_schema
    from hamsweep.results.writer import BufferedWriter

    w = BufferedWriter(
        PartWriter(tmp_path, {TRIALS: trials_schema({"ham.drop_step": pa.int64()})}),
        interval_s=3600,
    )
    base = {
        "trial": "a",
        "number": 0,
        "objective": "worst_robust",
        "epochs": 4,
        "restarts": 0,
        "ham_drop_step": 3,
    }
    w.add(TRIALS, [{**base, "status": "completed", "best_objective": 0.5, "epochs_run": 4}])
    w.flush()
    assert not w.due()  # the next flush waits for its interval
    w.add(TRIALS, [{**base, "status": "running", "best_objective": 0.1, "epochs_run": 1}])
    # replaces the buffered one
    w.add(TRIALS, [{**base, "status": "running", "best_objective": None, "epochs_run": 2}])
    w.flush()
    (row,) = read_table(tmp_path, TRIALS).to_pylist()
    assert (row["status"], row["best_objective"], row["epochs_run"], row["ham_drop_step"]) == (
        "running",
        None,
        2,
        3,
    )
    assert len(list((tmp_path / TRIALS).glob("part-*.parquet"))) == 2  # one part per flush


def test_parts_written_before_flip_backs_existed_still_read(tmp_path):
    v1 = pa.schema(
        [f for f in EPOCH_SCHEMA if f.name != "flip_backs"],
        metadata={"hamsweep.schema_version": "1"},
    )
    old_rows = [
        {k: v for k, v in row.items() if k != "flip_backs"}
        for row in epoch_rows("t", epoch_record(1), 0.2)
    ]
    PartWriter(tmp_path, {EPOCHS: v1}).append(EPOCHS, old_rows)
    # a folder of old parts only: no column
    assert read_table(tmp_path, EPOCHS).column("epoch").to_pylist() == [1]
    PartWriter(tmp_path).append(
        EPOCHS, epoch_rows("t", replace(epoch_record(2), flip_backs=5), 0.2)
    )
    # null where not recorded
    assert read_table(tmp_path, EPOCHS).column("flip_backs").to_pylist() == [None, 5]
    assert connect(tmp_path).execute("SELECT sum(flip_backs) FROM epochs").fetchone()[0] == 5
    compact(tmp_path)
    assert read_table(tmp_path, EPOCHS).column("flip_backs").to_pylist() == [None, 5]


def test_a_sweep_folder_from_before_trunks_has_no_baseline_and_no_history_views(tmp_path):
    from hamsweep.results.schema import TRIAL_SCHEMA, TRIALS
    from hamsweep.results.tables import top_trials

    old = pa.schema(
        [f for f in TRIAL_SCHEMA if f.name not in ("role", "trunk", "forked_at", "trunk_key")]
    )
    row = {f.name: None for f in old} | {
        "trial": "t1",
        "number": 0,
        "status": "completed",
        "epochs_run": 1,
        "epochs": 1,
    }
    (tmp_path / TRIALS).mkdir()
    pq.write_table(
        pa.Table.from_pylist([row], schema=old),
        tmp_path / TRIALS / "part-00000000000000000001-1.parquet",
    )
    writer = PartWriter(tmp_path)
    writer.append(EPOCHS, epoch_rows("t1", epoch_record(1), 0.2))
    assert [r["trial"] for r in top_trials(tmp_path, 5, "worst_robust")] == ["t1"]
    # no role column: nothing is a baseline
    assert top_trials(tmp_path, 5, "worst_robust", role="trunk") == []
    views = {r[0] for r in connect(tmp_path).execute("SHOW TABLES").fetchall()}
    assert "trial_epochs" not in views and {"trials", "epochs"} <= views


def test_a_schema_3_folder_reads_with_schema_4_roles_numbers_and_costs(tmp_path):
    """Before schema 4 a confirm trial said role 'search' (or 'trunk') and carried its config's
    Optuna number, and only GPU-seconds were kept: readers give every folder schema 4's answers."""
    from hamsweep.results.schema import TRIAL_SCHEMA, TRIALS

    v3 = pa.schema(
        [f for f in TRIAL_SCHEMA if f.name not in ("device", "device_seconds")],
        metadata={"hamsweep.schema_version": "3"},
    )
    base = {f.name: None for f in v3} | {"status": "completed", "epochs": 4, "epochs_run": 4}
    rows = [
        base
        | {
            "trial": "s",
            "number": 3,
            "role": "search",
            "stage": "search",
            "trunk": "k",
            "forked_at": 1,
            "gpu_seconds": 30.0,
        },
        base | {"trial": "k", "role": "trunk", "stage": "search", "gpu_seconds": 40.0},
        base
        | {
            "trial": "c",
            "number": 3,
            "role": "search",
            "stage": "confirm",
            "config": "s",
            "gpu_seconds": 5.0,
        },
        base | {"trial": "b", "role": "trunk", "stage": "confirm", "gpu_seconds": 8.0},
    ]
    (tmp_path / TRIALS).mkdir()
    pq.write_table(
        pa.Table.from_pylist(rows, schema=v3),
        tmp_path / TRIALS / "part-00000000000000000001-1.parquet",
    )
    want = {
        "s": ("search", 3),
        "k": ("trunk", None),
        "c": ("confirm", None),
        "b": ("baseline", None),
    }
    assert {
        r["trial"]: (r["role"], r["number"]) for r in read_table(tmp_path, TRIALS).to_pylist()
    } == want
    con = connect(tmp_path)
    got = con.execute(
        "SELECT trial, role, number, device, device_seconds, inherited_device_seconds, "
        "total_device_seconds FROM trials"
    ).fetchall()
    assert {t: (r, n) for t, r, n, *_ in got} == want
    # 40 x 1/4 inherited
    assert {t: (d, own, inh, tot) for t, _, _, d, own, inh, tot in got}["s"] == (
        "gpu",
        30.0,
        10.0,
        40.0,
    )
    assert con.execute("SELECT count(*) FROM trials WHERE role = 'search'").fetchone()[0] == 1
    compact(tmp_path)  # a resumed old folder: its compacted part holds the schema-4 roles
    assert {
        r["trial"]: (r["role"], r["number"]) for r in pq.read_table(tmp_path / TRIALS).to_pylist()
    } == want


# ---- compaction while a sweep runs (issue 13, part 8) ----
def _expected_and_writes(tmp_path, flushes: int, seed: int, compact_every=None):
    """Seeded flushes of epochs rows, keys rewritten at random (also twice in one part, the later
    row winning); returns key -> the newest value, worked out here without the project's readers."""
    import random

    rng, writer, expected, value = random.Random(seed), PartWriter(tmp_path), {}, 0
    for i in range(flushes):
        rows = []
        for _ in range(rng.randint(1, 20)):
            key, value = (f"t{rng.randint(0, 30)}", rng.randint(1, 10)), value + 1
            rows.append({"trial": key[0], "epoch": key[1], "seconds": float(value)})
            expected[key] = float(value)
        writer.append(EPOCHS, rows)
        if compact_every is not None:
            compact_every(i, expected)
    return expected


def _read(tmp_path) -> dict:
    return {
        (r["trial"], r["epoch"]): r["seconds"] for r in read_table(tmp_path, EPOCHS).to_pylist()
    }


def test_live_compaction_keeps_every_answer_and_few_parts(tmp_path):
    import random
    import time

    from hamsweep.results.layout import parts
    from hamsweep.results.writer import compact_live

    rng, folds = random.Random(1), []

    def maybe_compact(i: int, expected: dict) -> None:
        limit = rng.randint(1, 6)
        folds.extend(compact_live(tmp_path, limit=limit, grace_s=0))
        found = parts(tmp_path, EPOCHS)
        assert len(found.recent) < limit and not found.covered  # the folded parts are gone
        assert _read(tmp_path) == expected, f"after flush {i}"
        assert connect(tmp_path).execute("SELECT count(*) FROM epochs").fetchall() == [
            (len(expected),)
        ]

    expected = _expected_and_writes(tmp_path, 150, seed=0, compact_every=maybe_compact)
    assert len(folds) >= 20 and _read(tmp_path) == expected  # the last flush's rows, all of them
    # with a grace, the folded parts stay until their base is that old:
    # a reader may have listed them
    _expected_and_writes(tmp_path, 3, seed=9)
    assert (
        compact_live(tmp_path, limit=1, grace_s=0.5) == [EPOCHS]
        and len(parts(tmp_path, EPOCHS).covered) == 4
    )
    time.sleep(0.6)
    compact_live(tmp_path, limit=1, grace_s=0.5)
    assert parts(tmp_path, EPOCHS).covered == [] and len(parts(tmp_path, EPOCHS).live) == 1


def test_a_compaction_killed_after_its_base_is_renamed_loses_and_doubles_nothing(tmp_path):
    """A SIGKILL between the base's rename and the deletion of the parts it covers leaves both: the
    readers skip the covered parts, and the next compaction deletes them."""
    from hamsweep.results.layout import _stem, _write_part, parts
    from hamsweep.results.writer import compact_live

    expected = _expected_and_writes(tmp_path, 12, seed=2)
    found = parts(tmp_path, EPOCHS)
    # the kill: no deletes
    _write_part(tmp_path / EPOCHS, read_table(tmp_path, EPOCHS), stem=_stem(found.recent[-1]))
    after = parts(tmp_path, EPOCHS)
    assert (
        after.base is not None
        and after.recent == []
        and sorted(after.covered) == sorted(found.recent)
    )
    assert _read(tmp_path) == expected
    expected.update(_expected_and_writes(tmp_path, 3, seed=3))
    compact_live(tmp_path, limit=1, grace_s=0)
    assert _read(tmp_path) == expected and len(list((tmp_path / EPOCHS).glob("part-*"))) == 1


def test_a_compaction_sigkilled_at_random_moments_loses_nothing(tmp_path):
    import os
    import random
    import signal
    import subprocess
    import sys
    import time

    from hamsweep.results.layout import parts

    expected = _expected_and_writes(tmp_path, 40, seed=4)
    big = [{"trial": f"x{i % 500}", "epoch": i // 500, "seconds": float(i)} for i in range(200_000)]
    PartWriter(tmp_path).append(EPOCHS, big)
    expected.update({(r["trial"], r["epoch"]): r["seconds"] for r in big})
    fold = f"from hamsweep.results.writer import compact; compact({str(tmp_path)!r})"
    rng = random.Random(5)
    for round_ in range(6):
        proc = subprocess.Popen([sys.executable, "-c", fold])
        # import ~0.5 s, then the fold: the kill lands before, during or after
        time.sleep(rng.uniform(0.3, 2.0))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert _read(tmp_path) == expected, f"round {round_}"
        expected.update(_expected_and_writes(tmp_path, 3, seed=10 + round_))
    compact(tmp_path)
    assert _read(tmp_path) == expected and parts(tmp_path, EPOCHS).covered == []


def test_a_reader_never_fails_nor_doubles_a_row_while_the_writer_compacts(tmp_path):
    """A reader in another process lists parts that a compaction deletes under it:
    it reads again."""
    import subprocess
    import sys
    import time

    from hamsweep.results.writer import compact_live

    writer = PartWriter(tmp_path)
    writer.append(EPOCHS, [{"trial": "t", "epoch": 0, "seconds": 0.0}])
    reader = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"""
import time
from hamsweep.results.store import EPOCHS, read_table
deadline, last, reads = time.monotonic() + 6, 0, 0
while time.monotonic() < deadline:
    t = read_table({str(tmp_path)!r}, EPOCHS)
    n, keys = t.num_rows, len(set(zip(t["trial"].to_pylist(), t["epoch"].to_pylist())))
    assert n == keys and n >= last, (n, keys, last)  # no row twice; only new keys are written
    last, reads = n, reads + 1
print(reads)
""",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    epoch, folds = 0, 0
    while reader.poll() is None:
        epoch += 1
        writer.append(
            EPOCHS, [{"trial": f"t{i}", "epoch": epoch, "seconds": 1.0} for i in range(50)]
        )
        folds += len(compact_live(tmp_path, limit=3))
        time.sleep(0.01)
    out, _ = reader.communicate()
    assert reader.returncode == 0 and int(out) >= 10 and folds >= 10


def test_the_sweeps_writer_marks_fresh_parts_and_never_a_rewrite(tmp_path):
    """Fresh parts (no key on disk yet) are read without deduplication; a restarted trial's
    epoch written again, in this driver or after a resume (a new writer), is not fresh and
    its row wins."""
    from hamsweep.results.layout import parts
    from hamsweep.results.writer import BufferedWriter

    def flush(writer: BufferedWriter, rows: list[tuple[str, int, float]]) -> bool:
        writer.add(EPOCHS, [{"trial": t, "epoch": e, "seconds": v} for t, e, v in rows])
        writer.flush()
        return ".fresh" in parts(tmp_path, EPOCHS).recent[-1].name

    writer = BufferedWriter(PartWriter(tmp_path))
    assert flush(writer, [("a", 1, 1.0), ("b", 1, 1.0)]) and flush(writer, [("a", 2, 1.0)])
    assert not flush(writer, [("a", 2, 2.0), ("a", 3, 2.0)])  # epoch 2 again
    assert not flush(writer, [("c", 1, 1.0), ("c", 1, 3.0)])  # one key twice in a flush
    resumed = BufferedWriter(PartWriter(tmp_path))  # a new driver: it learns the keys from disk
    assert not flush(resumed, [("b", 1, 4.0)]) and flush(resumed, [("b", 2, 4.0)])
    assert _read(tmp_path) == {
        ("a", 1): 1.0,
        ("a", 2): 2.0,
        ("a", 3): 2.0,
        ("b", 1): 4.0,
        ("b", 2): 4.0,
        ("c", 1): 3.0,
    }
    compact(tmp_path)
    assert flush(resumed, [("d", 1, 1.0)]) and _read(tmp_path)[("d", 1)] == 1.0
