"""One trial outside any sweep (``hamsweep train``): run folder, Parquet, progress, final report."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from hamsweep import rundir
from hamsweep.errors import SpecError
from hamsweep.results.read import read_table
from hamsweep.results.schema import (
    CLASS_STATE,
    CLASSES,
    EPOCHS,
    class_rows,
    class_state_rows,
    epoch_rows,
)
from hamsweep.results.writer import PartWriter, compact
from hamsweep.spec import TrialConfig, config_diff

if TYPE_CHECKING:
    from hamsweep.core.train import EpochRecord

__all__ = ["TRIAL", "epoch_line", "train_one"]

TRIAL = "train"  # the trial id of a standalone run in its tables


def _check_same_config(out: Path, cfg: TrialConfig) -> None:
    if diff := config_diff(rundir.read_spec(out), cfg):
        raise SpecError(
            "--resume",
            f"the config differs from {out / rundir.SPEC} in {', '.join(diff)}; resume with the "
            "same spec and --set",
        )


def epoch_line(record: EpochRecord, epochs: int) -> str:
    """One plain line per epoch, for logs and non-terminal output."""
    robust = record.val_robust()
    line = (
        f"epoch {record.epoch}/{epochs} {record.phase:<6} {record.seconds:6.1f}s "
        f"{record.images_per_s:7.0f} img/s lr {record.lr:.4g} loss {record.train_loss:.3f}"
    )
    if record.hard_fraction is not None:
        line += f" hard {record.hard_fraction:.2f}"
    if record.flip_backs:  # only where the two ham.easy_rule choices can disagree
        line += f" flip-backs {record.flip_backs}"
    if robust is not None:
        s = robust.summary(0.2)  # worst and mean do not depend on the CVaR fraction
        line += f" | val {robust.attack} worst {s['worst']:.3f} mean {s['mean']:.3f}"
    return line


def train_one(
    name: str, cfg: TrialConfig, out: Path | None, *, resume: bool, console: Console | None = None
) -> Path:
    """Check the folder, load the data, then train; nothing is written before the
    inputs are known good."""
    from hamsweep.core import data, train

    console = console or Console()
    out = Path(out) if out is not None else rundir.default_out(name)
    rundir.prepare(out, resume=resume)
    if resume:
        _check_same_config(out, cfg)
    dataset = data.load(cfg.data)  # a DataError here leaves nothing behind
    rundir.write_spec(out, {"name": name, **cfg.model_dump(mode="json")})
    rundir.write_manifest(out, resumed=resume)
    writer = PartWriter(out)

    def report(record: EpochRecord, _checkpoint: Path) -> None:
        writer.append(EPOCHS, epoch_rows(TRIAL, record, cfg.eval.cvar_fraction))
        writer.append(CLASSES, class_rows(TRIAL, record, dataset.classes))
        writer.append(CLASS_STATE, class_state_rows(TRIAL, record, dataset.classes))
        console.print(epoch_line(record, cfg.train.epochs), highlight=False, soft_wrap=True)

    if resume and (record := train.last_record(out / "checkpoint")) is not None:
        # the killed run may have died between checkpoint and Parquet
        report(record, out / "checkpoint")
    with _progress(console) as (progress, task):

        def on_batch(done: int, total: int) -> None:
            if progress is not None:
                progress.update(task, completed=done, total=total)

        train.run(cfg, workdir=out, report=report, on_batch=on_batch, dataset=dataset)
    compact(out)
    from hamsweep.report.summary import render

    console.print(render(read_table(out, EPOCHS), read_table(out, CLASSES), cfg.eval.cvar_fraction))
    tables = [EPOCHS, CLASSES] + ([CLASS_STATE] if (out / CLASS_STATE).is_dir() else [])
    console.print(
        f"results: {out} (Parquet tables in {', '.join(f'{out}/{t}' for t in tables)})",
        highlight=False,
        soft_wrap=True,
    )
    return out


class _progress:
    """A transient per-epoch progress bar in a terminal; nothing otherwise."""

    def __init__(self, console: Console) -> None:
        self.progress = (
            Progress(
                TextColumn("training"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=console,
                transient=True,
            )
            if console.is_terminal
            else None
        )

    def __enter__(self) -> tuple[Progress | None, Any]:
        if self.progress is None:
            return None, None
        self.progress.__enter__()
        return self.progress, self.progress.add_task("epoch", total=None)

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.__exit__(*exc)
