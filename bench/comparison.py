"""The smoke benchmark (search_spaces/smoke_benchmark.yaml): seven methods compared under one
budget, run twice in one go, with the confirm stage's PGD-AT baselines trained early (in slots the
search leaves idle) and without (only after the search), and read back from the Parquet files.

    .venv/bin/python bench/comparison.py [--keep DIR] [--set KEY=VALUE ...]

For each run it prints:

- wall time: the first trial's start to the last trial's end (trials.started / ended);
- idle slot-seconds: ``search.max_concurrent`` slots x that wall time, less the trials' wall
  seconds summed: what the slots did not train;
- each method's search cost: its trials' device-hours (own: a fork's from its fork epoch), the
  warm-up its forks inherited from the shared PGD-AT trunk, counted once (what the budget rule in
  device-hours, ``search.method_hours``, counts), and the spread of their sums over the methods;
- the confirmed table (``hamsweep results``) of the second run.

Then the ratio of the two wall times and idle slot-seconds, measured in this run.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import duckdb

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "search_spaces" / "smoke_benchmark.yaml"
HAMSWEEP = str(Path(sys.executable).with_name("hamsweep"))


def _run(out: Path, early: bool, extra: list[str]) -> None:
    sets = ["--set", f"confirm.early={str(early).lower()}"]
    for item in extra:
        sets += ["--set", item]
    cmd = [HAMSWEEP, "run", str(SPEC), "--out", str(out), *sets]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")


def _measure(out: Path, slots: int) -> dict[str, float]:
    con = duckdb.connect()
    trials = f"read_parquet('{out}/trials/*.parquet', union_by_name = true)"
    # the newest row of each trial (the writer appends a row per change)
    con.execute(
        f"CREATE VIEW t AS SELECT * FROM {trials} "
        "QUALIFY row_number() OVER (PARTITION BY trial ORDER BY ended DESC NULLS LAST) = 1"
    )
    first, last, busy = con.execute(
        "SELECT min(started), max(ended), sum(wall_seconds) FROM t"
    ).fetchone()
    wall = (last - first).total_seconds()
    return {"wall": wall, "idle": slots * wall - busy, "busy": busy}


def _costs(out: Path) -> list[tuple]:
    """Per method: its search trials, their own device-hours, the warm-up its forks inherited
    counted once per trunk (as far as its latest fork), and the two summed: what the budget rule
    in device-hours (search.method_hours) counts."""
    con = duckdb.connect()
    newest = (
        f"(SELECT * FROM read_parquet('{out}/trials/*.parquet', union_by_name = true) "
        "QUALIFY row_number() OVER (PARTITION BY trial ORDER BY ended DESC NULLS LAST) = 1)"
    )
    return con.execute(
        f"""WITH t AS {newest},
            s AS (SELECT * FROM t WHERE role = 'search' AND stage = 'search'),
            w AS (SELECT s.train_method, s.trunk,
                         max(k.device_seconds / k.epochs_run * s.forked_at) AS seconds
                  FROM s JOIN t AS k ON k.trial = s.trunk GROUP BY s.train_method, s.trunk),
            o AS (SELECT train_method, count(*) AS n, sum(device_seconds) AS own
                  FROM s GROUP BY train_method)
            SELECT o.train_method, o.n, o.own / 3600, coalesce(sum(w.seconds), 0) / 3600,
                   (o.own + coalesce(sum(w.seconds), 0)) / 3600
            FROM o LEFT JOIN w USING (train_method)
            GROUP BY o.train_method, o.n, o.own ORDER BY o.train_method"""
    ).fetchall()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--keep", type=Path, help="run here and keep the sweep folders")
    p.add_argument("--set", action="append", default=[], dest="sets", metavar="KEY=VALUE")
    a = p.parse_args()
    root = a.keep or Path(tempfile.mkdtemp(prefix="hamsweep-comparison-"))
    slots = 2  # smoke_benchmark.yaml's search.max_concurrent
    found = {}
    for early in (False, True):
        out = root / f"early-{str(early).lower()}"
        _run(out, early, a.sets)
        found[early] = _measure(out, slots)
        m = found[early]
        print(
            f"confirm.early={str(early).lower()}: wall {m['wall']:.0f} s, trials busy "
            f"{m['busy']:.0f} slot-s, idle {m['idle']:.0f} slot-s of {slots} x {m['wall']:.0f}"
        )
        print("  method   trials  own device-hours  + warm-up once  = search  / most")
        costs = _costs(out)
        most = max(c[4] for c in costs)
        for method, n, own, warmup, total in costs:
            print(
                f"  {method:<8} {n:>6}  {own:>16.4f}  {warmup:>14.4f}  {total:>8.4f}  "
                f"{total / most:>6.2f}"
            )
        print(f"  the most over the least: {most / min(c[4] for c in costs):.2f}x")
    off, on = found[False], found[True]
    print(
        f"\nearly baselines / without: wall {on['wall'] / off['wall']:.2f}x, "
        f"idle slot-seconds {on['idle'] / max(off['idle'], 1e-9):.2f}x"
    )
    print(
        subprocess.run(
            [HAMSWEEP, "results", str(root / "early-true")], text=True, capture_output=True
        ).stdout
    )


if __name__ == "__main__":
    main()
