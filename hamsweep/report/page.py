"""The report's one HTML page: a header (the sweep, its status, the confirmed table or the top
trials), then every figure as an embedded PNG with its title and caption. Self-contained: no
script, no stylesheet or image from anywhere else, so it opens from a shared folder, offline, or
as an e-mail attachment."""

from __future__ import annotations

import base64
import html
from collections import Counter
from typing import Any

from hamsweep.report.data import ReportData

__all__ = ["page"]

_STYLE = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;font-size:13px;margin:1em 0}\
td,th{border-bottom:1px solid #ccc;padding:3px 8px;text-align:right}
th:first-child,td:first-child{text-align:left}img{max-width:100%}\
figure{margin:2em 0}figcaption{color:#555;font-size:13px}
.snapshot{background:#fff3cd;padding:6px 10px}"""


def _table(head: list[str], rows: list[list[Any]]) -> str:
    cells = "".join(f"<th>{html.escape(str(h))}</th>" for h in head)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows
    )
    return f"<table><tr>{cells}</tr>{body}</table>"


def _results(d: ReportData) -> str:
    from hamsweep.keys import BASELINE
    from hamsweep.results.tables import cost_cells, mean_std, paper_rows, top_trials

    if d.confirm:
        robust, rows = paper_rows(d.out, d.spec)
        head = [
            "config",
            "seeds",
            "search (val)",
            "worst",
            "CVaR",
            "mean",
            "clean",
            "Δ vs PGD-AT",
            "interval",
            f"{d.device()}-h per seed",
            "cost ×PGD-AT",
        ]
        body = [
            [
                r["config"],
                r["seeds"],
                f"{100 * r['search_value']:.1f}" if r["search_value"] is not None else "—",
                *[
                    mean_std(r.get(f"{m}_mean"), r.get(f"{m}_std"))
                    for m in ("worst", "cvar", "mean", "clean")
                ],
                f"{100 * r['diff']:+.1f} [{100 * r['diff_low']:+.1f}, {100 * r['diff_high']:+.1f}]"
                if r.get("diff_low") is not None
                else "—",
                r.get("verdict") or ("baseline" if r["role"] == BASELINE else "—"),
                *cost_cells(r),
            ]
            for r in rows
        ]
        return (
            f"<h2>Confirmed on the test split ({html.escape(robust)}; mean ± std over seeds)</h2>"
            + _table(head, body)
        )
    rows = top_trials(d.out, 5, d.objective)
    head = ["#", "trial", "status", "epochs", f"{d.objective} (val)"]
    body = [
        [
            r["number"],
            r["trial"],
            r["status"],
            f"{r['epochs_run']}/{r['epochs']}",
            f"{100 * (r['value'] or 0):.1f}",
        ]
        for r in rows
    ]
    return (
        f"<h2>Best trials (validation {html.escape(d.objective)}; no confirm stage yet)</h2>"
        + _table(head, body)
    )


def _header(d: ReportData) -> str:
    s = d.spec
    counts = Counter(t["status"] for t in d.search())
    # own costs: each trunk's warm-up once
    spent = sum(t["device_seconds"] or 0 for t in d.trials) / 3600
    searched = ", ".join(s.search.space) or "nothing"
    status = (
        f'<p class="snapshot">running: a snapshot of what is there at {html.escape(d.taken)}</p>'
        if d.running
        else f"<p>finished; read at {html.escape(d.taken)}</p>"
    )
    return (
        f"<h1>hamsweep report: {html.escape(s.name)}</h1>{status}"
        f"<p>{html.escape(s.data.name)} / {html.escape(s.model.name)} / "
        f"{html.escape(s.train.method)}, {s.train.epochs} epochs; "
        f"searches {html.escape(searched)}; objective: validation {html.escape(d.objective)}; "
        f"{s.search.trials} trials by {html.escape(s.search.sampler)}</p>"
        f"<p>trials: {', '.join(f'{n} {k}' for k, n in sorted(counts.items()))}; "
        f"{d.device()}-hours {spent:.2f}</p>{_results(d)}"
    )


def page(d: ReportData, figures: list[Any], png: dict[str, bytes]) -> str:
    """The page: ``figures`` (``figures.Drawn``) with their PNG bytes by name, embedded."""
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>hamsweep report: {html.escape(d.spec.name)}</title>"
        f"<style>{_STYLE}</style></head><body>",
        _header(d),
    ]
    for f in figures:
        data = base64.b64encode(png[f.name]).decode()
        parts.append(
            f"<figure id='{f.name}'><h2>{html.escape(f.title)}</h2>"
            f"<img alt='{html.escape(f.title)}' src='data:image/png;base64,{data}'>"
            f"<figcaption>{html.escape(f.caption)} Files: {f.name}.png, {f.name}.pdf.</figcaption>"
            "</figure>"
        )
    parts.append("</body></html>")
    return "".join(parts)
