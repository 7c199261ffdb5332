from __future__ import annotations

from dataclasses import replace

import pyarrow as pa
import pyarrow.parquet as pq

from hamsweep.results import CLASSES, EPOCH_SCHEMA, EPOCHS, PartWriter, class_rows, compact, connect, epoch_rows, read_table
from hamsweep.evaluation import EvalCounts
from hamsweep.train import EpochRecord


def _record(epoch: int, correct=(3, 1)) -> EpochRecord:
    evals = (EvalCounts("val", "clean", (4, 4), (4, 3)), EvalCounts("val", "pgd20", (4, 4), correct))
    return EpochRecord(epoch=epoch, phase="ham", seconds=1.0, images=8, images_per_s=8.0, lr=0.1, train_loss=1.0,
                       train_acc=0.5, hard_fraction=0.5, kept_fraction=0.5, attack_steps=40, attack_steps_full=80,
                       decision_forwards=8, train_examples=4, empty_batches=0, evals=evals)


def test_parts_are_deduplicated_newest_first_and_compacted(tmp_path):
    w = PartWriter(tmp_path)
    for epoch, correct in [(1, (3, 1)), (2, (2, 2)), (2, (4, 0))]:  # epoch 2 written twice, as after a crash
        rec = _record(epoch, correct)
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
    assert con.execute("SELECT count(*) FROM classes WHERE attack = 'pgd20' AND correct < n").fetchone()[0] == 3


def test_empty_folder_reads_as_empty_tables(tmp_path):
    assert read_table(tmp_path, EPOCHS).num_rows == 0
    assert not any(tmp_path.iterdir())


def test_no_temporary_files_are_left(tmp_path):
    PartWriter(tmp_path).append(EPOCHS, epoch_rows("t", _record(1), 0.2))
    assert [p.name.startswith("part-") for p in (tmp_path / EPOCHS).iterdir()] == [True]


def test_a_newer_row_replaces_the_whole_row_nulls_included(tmp_path):
    from hamsweep.results import TRIALS, BufferedWriter, trials_schema

    import pyarrow as pa

    w = BufferedWriter(PartWriter(tmp_path, {TRIALS: trials_schema({"ham.drop_step": pa.int64()})}), interval_s=3600)
    base = {"trial": "a", "number": 0, "objective": "worst_robust", "epochs": 4, "restarts": 0, "ham_drop_step": 3}
    w.add(TRIALS, [{**base, "status": "completed", "best_objective": 0.5, "epochs_run": 4}])
    w.flush()
    assert not w.due()  # the next flush waits for its interval
    w.add(TRIALS, [{**base, "status": "running", "best_objective": 0.1, "epochs_run": 1}])
    w.add(TRIALS, [{**base, "status": "running", "best_objective": None, "epochs_run": 2}])  # replaces the buffered one
    w.flush()
    (row,) = read_table(tmp_path, TRIALS).to_pylist()
    assert (row["status"], row["best_objective"], row["epochs_run"], row["ham_drop_step"]) == ("running", None, 2, 3)
    assert len(list((tmp_path / TRIALS).glob("part-*.parquet"))) == 2  # one part per flush


def test_parts_written_before_flip_backs_existed_still_read(tmp_path):
    v1 = pa.schema([f for f in EPOCH_SCHEMA if f.name != "flip_backs"], metadata={"hamsweep.schema_version": "1"})
    old_rows = [{k: v for k, v in row.items() if k != "flip_backs"} for row in epoch_rows("t", _record(1), 0.2)]
    PartWriter(tmp_path, {EPOCHS: v1}).append(EPOCHS, old_rows)
    assert read_table(tmp_path, EPOCHS).column("epoch").to_pylist() == [1]  # a folder of old parts only: no column
    PartWriter(tmp_path).append(EPOCHS, epoch_rows("t", replace(_record(2), flip_backs=5), 0.2))
    assert read_table(tmp_path, EPOCHS).column("flip_backs").to_pylist() == [None, 5]  # null where not recorded
    assert connect(tmp_path).execute("SELECT sum(flip_backs) FROM epochs").fetchone()[0] == 5
    compact(tmp_path)
    assert read_table(tmp_path, EPOCHS).column("flip_backs").to_pylist() == [None, 5]


def test_a_sweep_folder_from_before_trunks_has_no_baseline_and_no_history_views(tmp_path):
    from hamsweep.tables import top_trials
    from hamsweep.results import TRIAL_SCHEMA, TRIALS

    old = pa.schema([f for f in TRIAL_SCHEMA if f.name not in ("role", "trunk", "forked_at", "trunk_key")])
    row = {f.name: None for f in old} | {"trial": "t1", "number": 0, "status": "completed", "epochs_run": 1, "epochs": 1}
    (tmp_path / TRIALS).mkdir()
    pq.write_table(pa.Table.from_pylist([row], schema=old), tmp_path / TRIALS / "part-00000000000000000001-1.parquet")
    writer = PartWriter(tmp_path)
    writer.append(EPOCHS, epoch_rows("t1", _record(1), 0.2))
    assert [r["trial"] for r in top_trials(tmp_path, 5, "worst_robust")] == ["t1"]
    assert top_trials(tmp_path, 5, "worst_robust", role="trunk") == []  # no role column: nothing is a baseline
    views = {r[0] for r in connect(tmp_path).execute("SHOW TABLES").fetchall()}
    assert "trial_epochs" not in views and {"trials", "epochs"} <= views
