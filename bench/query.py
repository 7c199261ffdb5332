"""Worst class per trial: ``hamsweep query`` over the Parquet tables vs pandas over
Ray's progress.csv files.

    .venv/bin/python bench/query.py [--trials 1000] [--epochs 100] [--classes 100]
                                    [--writer rows|table] [--repeats 3] [--keep DIR]

Draws seeded per-class robust counts for every (trial, epoch, class): N_PER_CLASS validation images,
``correct ~ Binomial(n, p)`` with p rising over the epochs and differing by trial and class (so the
worst class moves around and ties occur). The same counts are written twice; writing is not timed
against the queries:

- through the project's writer into a results folder's ``classes`` table (split ``val``, attack
  ``pgd20``), one part per trial: ``--writer rows`` (default) builds the rows with
  ``results.class_rows`` and calls ``PartWriter.append``, the sweep's path; ``--writer table``
  hands ``results._write_part`` (what ``append`` calls) a table built from the numpy columns with
  ``CLASS_SCHEMA``: same schema, same atomic part files, faster. Then ``results.compact``
  once, as a run does at its end. (A live sweep writes a part per flush of its buffered writer, so
  the part count of an uncompacted run depends on its length, not on --trials as here.)
- as Ray Tune's per-trial layout: ``<trial>/progress.csv`` with one row per epoch, ``trial_id``,
  ``training_iteration`` and one column per class accuracy named as Ray flattens nested metrics,
  ``val_pgd20_acc/class_<id>``. Ray's ~15 bookkeeping columns are left out, which only helps pandas.

The question, defined identically on both sides: for each trial, at its last epoch (largest
``epoch`` / ``training_iteration``), the class with the lowest robust accuracy ``correct / n``;
ties go to the lowest class id. Timed, best of ``--repeats``:

- ``hamsweep.results.query.query(root, SQL)``, the code path of ``hamsweep query`` (DuckDB over the
  deduplicating views), on the per-trial parts and again after compaction;
- the same SQL as ``hamsweep query DIR SQL --format csv`` in a subprocess, once per layout, wall
  time including Python start-up;
- both again over a third layout, a live sweep's: one fresh part per trial, folded into the base by
  ``compact_live`` as they are written (the fold times are printed);
- pandas: glob + read_csv + concat of every progress.csv, then the worst class per trial;
- for reference only, the same SQL over ``read_parquet`` of the compacted part without the
  deduplicating view, to show what the deduplication costs.

All answers must agree (same class per trial, accuracy within 1e-9) or the script exits with an
error. Prints the ratio pandas / hamsweep measured in this run. Goal: >= 10x faster and under 1 s.
"""

from __future__ import annotations

import argparse
import csv
import glob
import io
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import TypeVar

import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repo root, so the bench runs from a checkout without installing

from hamsweep.results import store as results  # noqa: E402
from hamsweep.results.query import query  # noqa: E402

N_PER_CLASS = 100  # validation images per class: accuracies are multiples of 1/100, so ties happen
SPLIT, ATTACK = "val", "pgd20"
# Ray flattens {"val_pgd20_acc": {"class_17": a}} with "/"
RAY_COLUMN = f"{SPLIT}_{ATTACK}_acc/class_"
TOLERANCE = 1e-9  # agreement of the accuracies (CSV text round trip vs Parquet integers)
GOAL_RATIO, GOAL_SECONDS = 10.0, 1.0

WORST_SQL = f"""
WITH last AS (
    SELECT trial, epoch, class_id, correct / n AS robust_acc FROM classes
    WHERE split = '{SPLIT}' AND attack = '{ATTACK}'
    QUALIFY epoch = max(epoch) OVER (PARTITION BY trial)
)
SELECT trial, class_id AS worst_class, robust_acc FROM last
QUALIFY row_number() OVER (PARTITION BY trial ORDER BY robust_acc, class_id) = 1
ORDER BY trial
""".strip()

Answer = dict[str, tuple[int, float]]  # trial -> (worst class id, its robust accuracy)
T = TypeVar("T")


def main() -> None:
    args = _parse()
    correct = _counts(args.trials, args.epochs, args.classes, args.seed)
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        _run(args, correct, args.keep)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            _run(args, correct, Path(tmp))


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=1000, help="trials (default 1000)")
    parser.add_argument("--epochs", type=int, default=100, help="epochs per trial (default 100)")
    parser.add_argument("--classes", type=int, default=100, help="classes (default 100)")
    parser.add_argument(
        "--writer",
        choices=("rows", "table"),
        default="rows",
        help="rows: class_rows + PartWriter.append, the sweep's path (default); table: _write_part "
        "with a table built from numpy columns, faster",
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed runs per in-process query; the best counts"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic counts")
    parser.add_argument(
        "--keep",
        type=Path,
        default=None,
        help="write into DIR and keep it (default: a temporary folder)",
    )
    args = parser.parse_args()
    for name in ("trials", "epochs", "classes", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1 but got {getattr(args, name)}")
    return args


def _counts(trials: int, epochs: int, classes: int, seed: int) -> np.ndarray:
    """correct: (trials, epochs, classes) int64, out of N_PER_CLASS each."""
    rng = np.random.default_rng(seed)
    trial_skill = rng.uniform(-0.1, 0.1, size=(trials, 1, 1))
    class_ease = rng.uniform(-0.15, 0.15, size=(1, 1, classes))
    progress = 0.3 * np.arange(1, epochs + 1).reshape(1, epochs, 1) / epochs
    p = np.clip(0.25 + progress + trial_skill + class_ease, 0.01, 0.99)
    return rng.binomial(N_PER_CLASS, p)


def _trial_name(t: int) -> str:
    return f"trial_{t:05d}"


def _run(args: argparse.Namespace, correct: np.ndarray, tmp: Path) -> None:
    parquet_root, ray_root = tmp / "run", tmp / "ray"
    write_s = _timed(lambda: _write_parquet(parquet_root, correct, args.writer))[0]
    _write_ray(ray_root, correct)
    print(
        f"{args.trials} trials x {args.epochs} epochs x {args.classes} classes = {correct.size:,} "
        f"class rows; {args.trials} parts written with --writer {args.writer} in {write_s:.1f} s "
        f"({correct.size / write_s:,.0f} rows/s)",
        flush=True,
    )
    expected, repeats = _expected(correct), args.repeats

    def hamsweep_query() -> Answer:
        return _answer(query(parquet_root, WORST_SQL))

    pandas_s = _best(lambda: _pandas_worst(ray_root), repeats, expected, "pandas")
    timings = [
        (
            f"hamsweep query, {args.trials} parts, in-process",
            _best(hamsweep_query, repeats, expected, "parts"),
        ),
        (
            f"hamsweep query, {args.trials} parts, CLI subprocess",
            _cli(parquet_root, expected, "CLI (parts)"),
        ),
    ]
    compact_s = _timed(lambda: results.compact(parquet_root))[0]
    print(f"compact: {args.trials} parts -> 1 in {compact_s:.1f} s")
    timings += [
        (
            "hamsweep query, compacted, in-process",
            _best(hamsweep_query, repeats, expected, "compacted"),
        ),
        (
            "hamsweep query, compacted, CLI subprocess",
            _cli(parquet_root, expected, "CLI (compacted)"),
        ),
        (
            "(reference) same SQL, compacted, no dedup view",
            _best(lambda: _answer(_raw_query(parquet_root)), repeats, expected, "raw read_parquet"),
        ),
    ]
    live_root = tmp / "live"
    folds, live_s = _write_live(live_root, correct)
    found = results.parts(live_root, results.CLASSES)
    print(
        f"live layout: {args.trials} fresh parts, compacted as written ({len(folds)} folds into "
        f"the base, {sum(folds):.1f} s in all, the longest {max(folds, default=0):.2f} s; writing "
        f"took {live_s:.1f} s); the query meets the base + {len(found.recent)} fresh parts"
    )
    timings += [
        (
            "hamsweep query, live sweep, in-process",
            _best(lambda: _answer(query(live_root, WORST_SQL)), repeats, expected, "live"),
        ),
        ("hamsweep query, live sweep, CLI subprocess", _cli(live_root, expected, "CLI (live)")),
    ]
    _report(args, pandas_s, timings)


def _write_live(root: Path, correct: np.ndarray) -> tuple[list[float], float]:
    """As a running sweep leaves the folder: one fresh part per flush (here one per trial; new keys,
    as ``BufferedWriter`` marks them) and ``compact_live`` after each, as the writer calls it;
    returns the seconds of each fold and of the whole writing."""
    trials, _, classes = correct.shape
    names = [f"class{c:03d}" for c in range(classes)]
    folds, start = [], time.perf_counter()
    for t in range(trials):
        results._write_part(
            root / results.CLASSES, _class_table(_trial_name(t), correct[t], names), fresh=True
        )
        seconds, folded = _timed(lambda: results.compact_live(root, (results.CLASSES,)))
        if folded:
            folds.append(seconds)
    return folds, time.perf_counter() - start


def _report(args: argparse.Namespace, pandas_s: float, timings: list[tuple[str, float]]) -> None:
    print(
        "worst class per trial at the last epoch, best of "
        f"{args.repeats} (CLI: once, with Python start-up):"
    )
    print(
        f"  {f'pandas, read_csv x {args.trials} + concat':<48} {pandas_s:>8.3f} s   pandas / this"
    )
    for label, seconds in timings:
        print(f"  {label:<48} {seconds:>8.3f} s   {pandas_s / seconds:>6.1f}x")
    print(f"answers agree: same worst class for every trial, accuracies within {TOLERANCE:g}")
    # the compacted folder (a finished sweep) and the live one
    for label, seconds in [*timings[2:4], *timings[5:7]]:
        met = pandas_s / seconds >= GOAL_RATIO and seconds < GOAL_SECONDS
        print(
            f"goal (>= {GOAL_RATIO:.0f}x pandas and < {GOAL_SECONDS:.0f} s), {label}: "
            f"{'met' if met else 'NOT met'} ({pandas_s / seconds:.1f}x, {seconds:.3f} s)"
        )


def _write_parquet(root: Path, correct: np.ndarray, writer: str) -> None:
    """One ``classes`` part per trial through the project's writer."""
    trials, _, classes = correct.shape
    names = [f"class{c:03d}" for c in range(classes)]
    part_writer = results.PartWriter(root)
    for t in range(trials):
        if writer == "rows":
            part_writer.append(results.CLASSES, _class_rows(_trial_name(t), correct[t], names))
        else:
            results._write_part(
                root / results.CLASSES, _class_table(_trial_name(t), correct[t], names)
            )


def _class_rows(trial: str, correct: np.ndarray, names: list[str]) -> list[dict]:
    """Rows as the sweep builds them: ``class_rows`` of each epoch's record (duck-typed here)."""
    n = [N_PER_CLASS] * len(names)
    rows = []
    for e, counts in enumerate(correct.tolist(), start=1):  # epochs count from 1, as EpochRecord's
        record = SimpleNamespace(
            epoch=e, evals=[SimpleNamespace(split=SPLIT, attack=ATTACK, n=n, correct=counts)]
        )
        rows += results.class_rows(trial, record, names)
    return rows


def _class_table(trial: str, correct: np.ndarray, names: list[str]) -> pa.Table:
    """The same rows as ``_class_rows``, built column-wise: correct (epochs, classes)."""
    epochs, classes = correct.shape
    size = epochs * classes
    columns = {
        "trial": pa.array([trial] * size, pa.string()),
        "epoch": np.repeat(np.arange(1, epochs + 1, dtype=np.int32), classes),
        "split": pa.array([SPLIT] * size, pa.string()),
        "attack": pa.array([ATTACK] * size, pa.string()),
        "class_id": np.tile(np.arange(classes, dtype=np.int32), epochs),
        "class_name": pa.array(names * epochs, pa.string()),
        "n": np.full(size, N_PER_CLASS, dtype=np.int64),
        "correct": correct.reshape(-1).astype(np.int64),
    }
    return pa.table(columns, schema=results.CLASS_SCHEMA)


def _write_ray(root: Path, correct: np.ndarray) -> None:
    """One ``<trial>/progress.csv`` per trial: a row per epoch, a column per class accuracy."""
    trials, _, classes = correct.shape
    header = ",".join(
        ["trial_id", "training_iteration", *[f"{RAY_COLUMN}{c}" for c in range(classes)]]
    )
    for t in range(trials):
        folder = root / _trial_name(t)
        folder.mkdir(parents=True)
        acc = (correct[t] / N_PER_CLASS).tolist()
        lines = [header] + [
            ",".join([_trial_name(t), str(e), *map(repr, row)])
            for e, row in enumerate(acc, start=1)
        ]
        (folder / "progress.csv").write_text("\n".join(lines) + "\n")


def _pandas_worst(root: Path) -> Answer:
    """What an analyst does with Ray's output: read every progress.csv, keep
    each trial's last row."""
    import pandas as pd

    frames = [pd.read_csv(path) for path in sorted(glob.glob(str(root / "*" / "progress.csv")))]
    df = pd.concat(frames, ignore_index=True)
    last = df.loc[df.groupby("trial_id")["training_iteration"].idxmax()].set_index("trial_id")
    columns = sorted(
        (c for c in df.columns if c.startswith(RAY_COLUMN)), key=lambda c: int(c[len(RAY_COLUMN) :])
    )
    acc = last[columns]
    # the first minimum in class-id order: ties go to the lowest class id
    worst = acc.idxmin(axis=1)
    low = acc.min(axis=1)
    return {trial: (int(worst[trial][len(RAY_COLUMN) :]), float(low[trial])) for trial in acc.index}


def _raw_query(root: Path) -> pa.Table:
    """WORST_SQL over the compacted part read directly, without ``connect``'s deduplicating view."""
    import duckdb

    con = duckdb.connect()
    con.execute(
        "CREATE VIEW classes AS SELECT * FROM "
        f"read_parquet('{root / results.CLASSES}/part-*.parquet')"
    )
    return con.sql(WORST_SQL).to_arrow_table()


def _answer(table: pa.Table) -> Answer:
    d = table.to_pydict()
    return {t: (int(c), float(a)) for t, c, a in zip(d["trial"], d["worst_class"], d["robust_acc"])}


def _expected(correct: np.ndarray) -> Answer:
    """The answer from the counts themselves: argmin takes the first
    minimum, the lowest class id."""
    last = correct[:, -1, :]
    worst = last.argmin(axis=1)
    return {_trial_name(t): (int(c), float(last[t, c] / N_PER_CLASS)) for t, c in enumerate(worst)}


def _check(got: Answer, expected: Answer, label: str) -> None:
    if got.keys() != expected.keys():
        sys.exit(f"{label}: answered for {len(got)} trials, expected {len(expected)}")
    for trial, (cls, acc) in expected.items():
        if got[trial][0] != cls or abs(got[trial][1] - acc) > TOLERANCE:
            sys.exit(f"{label}: {trial} worst class {got[trial]} but the counts say {(cls, acc)}")


def _timed(fn: Callable[[], T]) -> tuple[float, T]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def _best(fn: Callable[[], Answer], repeats: int, expected: Answer, label: str) -> float:
    """Best wall seconds of ``repeats`` runs; every run's answer is checked against ``expected``."""
    times = []
    for _ in range(repeats):
        seconds, got = _timed(fn)
        _check(got, expected, label)
        times.append(seconds)
    return min(times)


def _cli(root: Path, expected: Answer, label: str) -> float:
    """Wall seconds of one ``hamsweep query ... --format csv`` subprocess,
    Python start-up included."""
    exe = Path(sys.executable).with_name("hamsweep")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "hamsweep.cli"]
    seconds, done = _timed(
        lambda: subprocess.run(
            [*cmd, "query", str(root), WORST_SQL, "--format", "csv"],
            capture_output=True,
            text=True,
            check=False,
        )
    )
    if done.returncode != 0:
        sys.exit(f"{label}: exit {done.returncode}: {done.stderr.strip()}")
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    _check(
        {r["trial"]: (int(r["worst_class"]), float(r["robust_acc"])) for r in rows}, expected, label
    )
    return seconds


if __name__ == "__main__":
    main()
