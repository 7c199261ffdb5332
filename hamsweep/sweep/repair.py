"""Damaged pieces of a sweep folder, found before a resume and set aside (renamed with a suffix,
never deleted), so that the sweep continues from its last good state.

Everything hamsweep writes is renamed into place, so a crash alone leaves nothing half-written;
damage comes from outside: a disk that filled up under another writer, a copy cut short, a file
system that lost its last blocks. Three pieces are checked:

- **Parquet parts** whose footer does not read (truncated): renamed ``part-….parquet.damaged``;
  temporary part files a write left unfinished are removed (readers never list them).
  Rows of trials that continue are written again from their checkpoints' histories; rows of a
  trial that had finished are lost with the part (the message says which table).
- **The Optuna journal** ending in a line that is not a whole JSON record (half a line): the whole
  file is kept as ``optuna.journal.damaged-<n>`` and the journal is rewritten, atomically, with its
  valid lines.
- **The newest checkpoint** of each trial not ended whose ``last.pt`` does not load, or that has no
  whole ``history.json`` beside it (``trial.whole_checkpoint``): renamed ``last.pt.damaged``; the
  trial restarts from its previous whole checkpoint (``trial.restore_checkpoint``), whose history
  holds every epoch until then, or from the start without one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["DAMAGED", "set_aside_damage"]

DAMAGED = ".damaged"  # suffix of a piece set aside


def set_aside_damage(out: Path, ray_dir: str) -> list[str]:
    """Check ``out`` (see the module docstring; ``ray_dir``: Tune's experiment folder in it);
    returns one line per piece set aside."""
    return [*_parquet(Path(out)), *_journal(Path(out)), *_checkpoints(Path(out) / ray_dir)]


def _parquet(out: Path) -> list[str]:
    import pyarrow.parquet as pq

    from hamsweep.results.store import SCHEMAS

    lines = []
    for table in SCHEMAS:
        # a write a kill or a full disk cut short
        if unfinished := sorted((out / table).glob(".part-*.tmp")):
            for tmp in unfinished:
                tmp.unlink()
            lines.append(
                f"removed {len(unfinished)} unfinished temporary part file(s) of {table} (never "
                "read as rows)"
            )
        for part in sorted((out / table).glob("part-*.parquet")):
            try:
                pq.read_metadata(part)
            except Exception:
                os.replace(part, part.with_name(part.name + DAMAGED))
                lines.append(
                    f"set aside a damaged Parquet part of {table}: {part} -> {part.name}{DAMAGED} "
                    "(its rows are not read)"
                )
    return lines


def _journal(out: Path) -> list[str]:
    from hamsweep.results.study import JOURNAL

    path = out / JOURNAL
    if not path.is_file():
        return []
    raw = path.read_bytes()
    good, lines = 0, raw.split(b"\n")
    for line in lines[:-1]:  # the text after the last newline is never a whole record
        try:
            json.loads(line)
        except ValueError:
            break
        good += len(line) + 1
    if good == len(raw):
        return []
    n = 1
    while (kept := out / f"{JOURNAL}{DAMAGED}-{n}").exists():
        n += 1
    os.replace(path, kept)
    tmp = out / f".{JOURNAL}.tmp-{os.getpid()}"
    tmp.write_bytes(raw[:good])
    os.replace(tmp, path)
    return [
        f"set aside a damaged Optuna journal: kept as {kept.name}; {path.name} holds its first "
        f"{good} valid bytes of {len(raw)}"
    ]


def _checkpoints(experiment: Path) -> list[str]:
    from hamsweep.core.train import LAST
    from hamsweep.results import store as results
    from hamsweep.sweep.dashboard import ENDED
    from hamsweep.sweep.trial import whole_checkpoint

    ended = {
        r["trial"]
        for r in results.read_table(experiment.parent, results.TRIALS).to_pylist()
        if r["status"] in ENDED
    }
    lines = []
    for trial in sorted(experiment.glob("trial_*")):
        if trial.name.removeprefix("trial_") in ended:
            continue  # it will not restore from a checkpoint
        complete = sorted(f for f in trial.glob("checkpoint_*") if (f / LAST).is_file())
        if not complete:
            continue
        newest = complete[-1] / LAST
        # a last.pt that does not load, or without its history
        if not whole_checkpoint(complete[-1]):
            os.replace(newest, newest.with_name(LAST + DAMAGED))
            lines.append(
                f"set aside a damaged checkpoint: {newest} -> {LAST}{DAMAGED}; {trial.name} "
                "continues from its previous one (or starts over)"
            )
    return lines
