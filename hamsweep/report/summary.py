"""The end-of-trial report: per-class accuracies, summary metrics, measured cost vs PGD-AT.

``render(epochs, classes, ...)`` is a pure function of the stored tables (the same Parquet that
``hamsweep query`` reads), returning a rich renderable.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
from rich.console import Group
from rich.table import Table
from rich.text import Text

from hamsweep.core.metrics import SUMMARY_KEYS, cvar_k, summarize

__all__ = ["cost", "latest_counts", "render"]


def latest_counts(
    classes: pa.Table, split: str
) -> dict[str, tuple[int, np.ndarray, np.ndarray, list[str]]]:
    """attack -> (epoch, n, correct, class names) of the latest epoch evaluated on ``split``."""
    rows = [r for r in classes.to_pylist() if r["split"] == split]
    if not rows:
        return {}
    out: dict[str, Any] = {}
    for attack in sorted({r["attack"] for r in rows}):
        mine = [r for r in rows if r["attack"] == attack]
        epoch = max(r["epoch"] for r in mine)
        mine = sorted((r for r in mine if r["epoch"] == epoch), key=lambda r: r["class_id"])
        out[attack] = (
            epoch,
            np.array([r["n"] for r in mine]),
            np.array([r["correct"] for r in mine]),
            [r["class_name"] for r in mine],
        )
    return out


def cost(epochs: pa.Table) -> dict[str, float]:
    """Measured attack cost vs what PGD-AT would have spent on the same images (all epochs)."""
    e = epochs.to_pydict()
    steps, full = sum(e["attack_steps"]), sum(e["attack_steps_full"])
    passes = steps + sum(e["train_examples"])
    full_passes = full + sum(e["images"])
    return {
        "attack_ratio": steps / full if full else float("nan"),
        "pass_ratio": passes / full_passes if full_passes else float("nan"),
        "seconds": float(sum(e["seconds"])),
        "empty_batches": float(sum(e["empty_batches"])),
    }


def _pct(x: float) -> str:
    return "-" if x is None or np.isnan(x) else f"{100 * x:5.1f}"


def _class_table(split: str, counts: dict[str, Any], cvar_fraction: float) -> Table:
    attacks = list(counts)
    robust = next((a for a in attacks if a != "clean"), attacks[0])
    _, n, c, names = counts[robust]
    acc = np.where(n > 0, c / np.maximum(n, 1), np.nan)
    worst = set(
        np.argsort(acc, kind="stable")[: cvar_k(int((n > 0).sum()) or 1, cvar_fraction)].tolist()
    )
    epoch = counts[robust][0]
    table = Table(
        title=f"{split} split, epoch {epoch}", caption=f"accuracy %; weakest {robust} in red"
    )
    table.add_column("class")
    for a in attacks:
        table.add_column(a, justify="right")
    for i, name in enumerate(names):
        style = "bold red" if i in worst else None
        cells = [
            _pct(counts[a][2][i] / counts[a][1][i] if counts[a][1][i] else np.nan) for a in attacks
        ]
        table.add_row(Text(name, style=style or ""), *[Text(x, style=style or "") for x in cells])
    return table


def _metric_table(by_split: dict[str, dict[str, Any]], cvar_fraction: float) -> Table:
    table = Table(title="summary over classes (%)")
    table.add_column("split / attack")
    for k in SUMMARY_KEYS:
        table.add_column(k, justify="right")
    for split, counts in by_split.items():
        for attack, (_, n, c, _) in counts.items():
            s = summarize(n, c, cvar_fraction)
            table.add_row(f"{split} / {attack}", *[_pct(s[k]) for k in SUMMARY_KEYS])
    return table


def render(epochs: pa.Table, classes: pa.Table, cvar_fraction: float = 0.2) -> Group:
    """The whole report as one rich renderable."""
    by_split = {s: latest_counts(classes, s) for s in ("val", "test")}
    by_split = {s: c for s, c in by_split.items() if c}
    parts: list[Any] = [_class_table(s, c, cvar_fraction) for s, c in by_split.items()]
    if by_split:
        parts.append(_metric_table(by_split, cvar_fraction))
    if epochs.num_rows:
        k = cost(epochs)
        parts.append(
            Text(
                f"cost vs PGD-AT on the same images: attack steps x{k['attack_ratio']:.3f}, "
                f"forward+backward passes x{k['pass_ratio']:.3f} "
                f"(saving {100 * (1 - k['pass_ratio']):.1f}%); {k['seconds']:.1f} s of training, "
                f"{int(k['empty_batches'])} batches with nothing kept"
            )
        )
    return Group(*parts)
