"""``hamsweep report DIR``: the pictures a robust-fairness researcher looks at, as one
self-contained HTML page and each figure as PNG and PDF (``report/`` in the sweep folder). It reads
the Parquet tables and the Optuna study only, never Ray, and works on a running
sweep (a snapshot, said so).

``data.load`` reads the folder, ``figures`` draws (matplotlib, Agg), ``page`` writes the HTML.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

__all__ = ["REPORT_DIR", "build_report"]

REPORT_DIR = "report"  # in the sweep folder, unless --out says otherwise


def build_report(out: Path, dest: Path | None = None) -> Path:
    """Write ``dest`` (default ``out/report``): index.html and <figure>.png/.pdf; returns
    index.html. Each file is written to a temporary name and renamed into place."""
    import matplotlib.pyplot as plt

    from hamsweep.report.data import load
    from hamsweep.report.figures import draw_all
    from hamsweep.report.page import page
    from hamsweep.rundir import atomic_write_text

    data = load(out)
    dest = Path(dest) if dest is not None else Path(out) / REPORT_DIR
    dest.mkdir(parents=True, exist_ok=True)
    drawn, png = draw_all(data), {}
    for f in drawn:
        for ext in ("png", "pdf"):
            buf = io.BytesIO()
            f.figure.savefig(buf, format=ext, dpi=110)
            _atomic_bytes(dest / f"{f.name}.{ext}", buf.getvalue())
        png[f.name] = (dest / f"{f.name}.png").read_bytes()
        plt.close(f.figure)
    index = dest / "index.html"
    atomic_write_text(index, page(data, drawn, png))
    return index


def _atomic_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)
