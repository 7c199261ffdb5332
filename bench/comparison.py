"""The smoke benchmark (search_spaces/smoke_benchmark.yaml): seven methods compared under one
budget, run twice in one go, with the confirm stage's PGD-AT baselines trained early (in slots the
search leaves idle) and without (only after the search), and read back from the Parquet files.

    .venv/bin/python bench/comparison.py [--keep DIR] [--set KEY=VALUE ...]

For each run it prints:

- wall time: the first trial's start to the last trial's end (trials.started / ended);
- idle slot-seconds: ``search.max_concurrent`` slots x that wall time, less the trials' wall
  seconds summed: what the slots did not train;
- each method's search cost: its trials' device-hours (own: a fork's from its fork epoch), and the
  share of the shared PGD-AT trunk its forks inherited;
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
    con = duckdb.connect()
    return con.execute(
        f"""SELECT train_method, count(*), sum(device_seconds) / 3600,
                   sum(CASE WHEN forked_at IS NULL THEN 0 ELSE forked_at END)
            FROM (SELECT * FROM read_parquet('{out}/trials/*.parquet', union_by_name = true)
                  QUALIFY row_number() OVER (PARTITION BY trial
                                             ORDER BY ended DESC NULLS LAST) = 1)
            WHERE role = 'search' GROUP BY train_method ORDER BY train_method"""
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
        print("  method   trials  own device-hours  inherited trunk epochs")
        for method, n, hours, inherited in _costs(out):
            print(f"  {method:<8} {n:>6}  {hours:>16.4f}  {inherited:>22}")
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
