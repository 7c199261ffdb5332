"""The tables of a sweep: the search's ranking (``top_trials``, ``results_table``) and the confirm
stage's table (``confirmed_table``, from the ``confirm`` Parquet table of
``hamsweep.sweep.confirm``).

``confirmed_table`` is the paper's table (mean ± std over seeds, the paired difference to PGD-AT);
``formatted`` writes it (or the ranking, when there is no confirm table) as csv, json or LaTeX.
In the terminal both fit 120 columns without cutting a number (``hamsweep.results._format``, which
the dashboard shares): numbers in %, the knobs in one column with a legend, no vertical rules; the
confirmed table lists its configs' knobs under it, which leaves room at 120 columns for its two
cost columns.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich import box
from rich.table import Table
from rich.text import Text

from hamsweep.core import methods, sequential
from hamsweep.core.methods import TRUNK_METHOD
from hamsweep.errors import SpecError
from hamsweep.keys import BASELINE, SEARCH, TRUNK
from hamsweep.results import store as results
from hamsweep.results._format import (
    knob_legend,
    knob_names,
    knobs_column,
    knobs_text,
    numeric_column,
    param_text,
    pct,
    short_names,
)
from hamsweep.results.spend import SearchCost, spending
from hamsweep.results.store import param_column
from hamsweep.spec import METHOD_KEY, OBJECTIVES, SweepSpec
from hamsweep.spec.trial import objective_summary

__all__ = [
    "FORMATS",
    "confirmed_table",
    "cost_cells",
    "formatted",
    "mean_std",
    "paper_rows",
    "results_table",
    "top_trials",
]

FORMATS = ("table", "csv", "json", "latex")  # hamsweep results --format


def top_trials(
    out: Path, k: int, by: str = "worst_robust", *, completed_only: bool = False, role: str = SEARCH
) -> list[dict[str, Any]]:
    """The ``k`` best trials of ``role`` (search trials; ``trunk``: the PGD-AT baselines) by the
    highest validation ``by`` over their selectable epochs, best first."""
    if by not in OBJECTIVES:
        raise SpecError("--by", f"unknown metric {by!r}; valid metrics are {', '.join(OBJECTIVES)}")
    if results.TRIALS not in results.tables(out):
        raise SpecError(str(out), "holds no trials yet; pass a sweep folder")
    con = results.connect(out)
    has_role = _has_column(con, "role")  # folders from before trunks have none
    if not has_role and role != SEARCH:
        return []
    conditions = ["t.status = 'completed'"] if completed_only else []
    conditions += [f"coalesce(t.role, '{SEARCH}') = '{role}'"] if has_role else []
    conditions += (
        [f"coalesce(t.stage, '{SEARCH}') = '{SEARCH}'"]
        if has_role and _has_column(con, "stage")
        else []
    )
    where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
    column = f"robust_{objective_summary(by)}"
    # the best of its own method's epochs, not of a PGD-AT warm-up (``ham.select_after_warmup``)
    sql = f"""
        WITH v AS (SELECT trial, coalesce(max({column}) FILTER (WHERE phase <> '{TRUNK_METHOD}'),
                                          max({column})) AS value
                   FROM epochs GROUP BY trial),
             b AS (SELECT e.trial, e.robust_worst, e.robust_mean, e.clean_mean
                   FROM epochs e JOIN trials t ON e.trial = t.trial AND e.epoch = t.best_epoch),
             x AS (SELECT trial, min(correct / n) AS test_worst, avg(correct / n) AS test_mean
                   FROM classes WHERE split = 'test' AND attack LIKE 'pgd%' GROUP BY trial)
        SELECT t.*, v.value, b.robust_worst, b.robust_mean, b.clean_mean, x.test_worst, x.test_mean
        FROM trials t LEFT JOIN v USING (trial) LEFT JOIN b USING (trial) LEFT JOIN x USING (trial)
        {where}
        ORDER BY v.value DESC NULLS LAST, t.number LIMIT {int(k)}"""
    return con.sql(sql).to_arrow_table().to_pylist()


def _has_column(con: Any, column: str, table: str = "trials") -> bool:
    return column in {r[0] for r in con.execute(f"DESCRIBE {table}").fetchall()}


def _terminal_table(title: str, caption: str) -> Table:
    """A table for a terminal of 120 columns: no vertical rules (two spaces between columns
    instead of three characters), the knobs' legend under it."""
    return Table(
        title=title,
        title_justify="left",
        caption=caption or None,
        caption_justify="left",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        padding=(0, 1, 0, 0),
    )


def _add_columns(table: Table, columns: list[tuple[str, str, list[str]]]) -> None:
    """(header, kind, cells) in order: kind 'number' and 'knobs' are never cut, 'text' (labels,
    words) shrinks."""
    for header, kind, cells in columns:
        if kind == "number":
            numeric_column(table, header, cells)
        elif kind == "knobs":
            knobs_column(table, cells)
        else:
            table.add_column(header, justify="left", overflow="ellipsis")


def results_table(out: Path, spec: SweepSpec, top: int = 10, by: str | None = None) -> Table:
    """The best trials with their parameters and summary metrics (validation; test where
    evaluated), in %."""
    by = by or spec.objective.primary
    rows = top_trials(out, top, by)
    baselines = top_trials(out, top, by, role=TRUNK)
    names = knob_names(list(spec.search.space))
    title = (
        f"{spec.name}: best {len(rows)} trials by validation {by}"
        + (", and the PGD-AT baseline" if baselines else "")
        + f"; in %: the highest validation {by}, then worst, mean and clean at its best epoch; "
        f"test where evaluated; {results.device_label(rows + baselines)}-h: device-hours, "
        "a fork's inherited warm-up included"
    )
    table = _terminal_table(title, knob_legend(names))
    cells = [_ranking_cells(r, names, spec) for r in rows + baselines]
    headers = [
        ("#", "number"),
        ("trial", "number"),
        ("status", "text"),
        ("epochs", "number"),
        ("knobs", "knobs"),
        (by.replace("_", "\n"), "number"),
        ("worst", "number"),
        ("mean", "number"),
        ("clean", "number"),
        ("test\nworst", "number"),
        ("test\nmean", "number"),
        (f"{results.device_label(rows + baselines)}-h", "number"),
    ]
    if not names:
        headers.remove(("knobs", "knobs"))
    _add_columns(table, [(h, kind, [c[i] for c in cells]) for i, (h, kind) in enumerate(headers)])
    table.columns[1].justify = "left"  # the trial id
    for r, row in zip(rows + baselines, cells, strict=True):
        table.add_row(
            *map(Text, row), end_section=r is (rows[-1] if rows else None) and bool(baselines)
        )
    return table


def _own(spec: SweepSpec, params: dict[str, Any], keep_method: bool = True) -> dict[str, Any]:
    """A row's searched values; in a comparison only those its method searches (another method's
    knob is not its own: a null there is not a value, e.g. HAM's 'uniform' temperature)."""
    method = params.get("train.method")
    if method not in spec.search.methods:
        return params
    own = {*spec.search.method_params(method), *(("train.method",) if keep_method else ())}
    return {k: v for k, v in params.items() if k in own}


def _ranking_cells(r: dict[str, Any], names: dict[str, str], spec: SweepSpec) -> list[str]:
    # a trunk has only its warm-up keys: the HAM knobs do not apply to PGD-AT
    params = _own(
        spec,
        {
            k: r.get(param_column(k))
            for k in names
            if r.get("role") != TRUNK or r.get(param_column(k)) is not None
        },
    )
    return [
        "PGD-AT" if r.get("role") == TRUNK else str(r["number"]),
        r["trial"],
        r["status"],
        f"{r['epochs_run']}/{r['epochs']}",
        *([knobs_text(params, names)] if names else []),
        pct(r["value"]),
        pct(r["robust_worst"]),
        pct(r["robust_mean"]),
        pct(r["clean_mean"]),
        pct(r["test_worst"]),
        pct(r["test_mean"]),
        _hours(r.get("total_device_seconds")),
    ]


def _hours(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds / 3600:.3g}"


# ---- the confirmed table ----
_COLUMNS = ("worst", "cvar", "mean")  # robust summaries shown, then clean mean
# confirm's cost columns
_COST = (
    "device",
    "own_device_hours",
    "inherited_device_hours",
    "device_hours",
    "cost_ratio",
    "gpu_hours",
)


def paper_rows(out: Path, spec: SweepSpec) -> tuple[str, list[dict[str, Any]]]:
    """(the robust attack shown, one dict per confirmed config and baseline: its knobs, mean and std
    per metric, the difference to PGD-AT in the objective's metric, GPU-hours); raw numbers,
    baseline first."""
    con = results.connect(out)
    attacks = {
        r[0] for r in con.execute(f"SELECT DISTINCT attack FROM {results.CONFIRM}").fetchall()
    }
    robust = (
        "autoattack"
        if "autoattack" in attacks
        else next((a for a in sorted(attacks) if a != "clean"), "clean")
    )
    key = objective_summary(spec.objective.primary)
    key = key if key in _COLUMNS else "worst"  # lcb: the worst class
    # the baseline first; 'trunk': its role in a confirm table written before schema 4
    stats = (
        con.sql(
            f"SELECT * FROM {results.CONFIRM} "
            f"ORDER BY role IN ('{BASELINE}', '{TRUNK}') DESC, number"
        )
        .to_arrow_table()
        .to_pylist()
    )
    params = {r["trial"]: r for r in con.sql("SELECT * FROM trials").to_arrow_table().to_pylist()}
    rows: dict[str, dict[str, Any]] = {}
    for r in stats:
        row = rows.setdefault(
            r["config"],
            {
                "config": r["label"],
                "role": BASELINE if r["role"] in (BASELINE, TRUNK) else r["role"],
                "seeds": r["seeds"],
                "search_objective": r["search_objective"],
                "search_value": r["search_value"],
                **{k: r.get(k) for k in _COST},
                "wall_hours": r["wall_hours"],
                **{
                    k: (params.get(r["config"]) or {}).get(param_column(k))
                    for k in spec.search.space
                },
            },
        )
        if r["attack"] == robust or (r["attack"] == "clean" and r["metric"] == "mean"):
            name = "clean" if r["attack"] == "clean" else r["metric"]
            row[f"{name}_mean"], row[f"{name}_std"] = r["mean"], r["std"]
            if r["attack"] == robust and r["metric"] == key:
                row["diff_metric"], row["diff"], row["diff_low"], row["diff_high"] = (
                    key,
                    r["diff_mean"],
                    r["diff_low"],
                    r["diff_high"],
                )
                row["verdict"] = r["verdict"]
                if r.get("lead_over"):  # the winner's lead over the second (schema 6)
                    row.update({f"lead_{k}": r[f"lead_{k}"] for k in _LEAD})
            if r["attack"] == robust:
                row["seeds"] = r["seeds"]
    spent = search_spending(list(params.values()))
    for row in rows.values():
        # what the search of the config's method spent to choose it (not for the baseline)
        method = row.get(METHOD_KEY) if spec.search.methods else None
        trials, seconds = (
            spent.get(method, (None, None)) if row["role"] != BASELINE else (None,) * 2
        )
        row["search_trials"] = trials
        row["search_device_hours"] = None if seconds is None else seconds / 3600
    return robust, list(rows.values())


def search_spending(trials: list[dict[str, Any]]) -> dict[str | None, tuple[int, float]]:
    """Method (None: every search trial, for a sweep of one method) -> (its search trials, the
    device-seconds they spent, as ``results.spend`` counts them: what a comparison's budget in
    device-hours counts). ``trials``: the ``trials`` view's rows."""
    search = [t for t in trials if t["role"] == "search" and t["stage"] == "search"]
    trunks = {t["trial"]: (t["device_seconds"] or 0.0, t["epochs_run"] or 0) for t in trials}

    def cost(t: dict[str, Any], method: str | None) -> SearchCost:
        epochs = max(0, (t["epochs_run"] or 0) - (t["forked_at"] or 0))
        return SearchCost(method, t["device_seconds"] or 0.0, epochs, 0, t["trunk"], t["forked_at"])

    column = param_column(METHOD_KEY)
    by_method = spending([cost(t, t.get(column)) for t in search], trunks)
    every = spending([cost(t, None) for t in search], trunks)
    return {m: (s.trials, s.seconds) for m, s in {**by_method, **every}.items()}


def _search_line(rows: list[dict[str, Any]], unit: str) -> str:
    """'search: HAM 7 trials, 0.0201 CPU-h; CFA 3 trials, 0.0203 CPU-h' (a comparison: each
    method once), or '' when no row has it."""
    seen: dict[str, str] = {}
    for r in rows:
        if r.get("search_trials") is None:
            continue
        method = r.get(METHOD_KEY)  # a comparison's rows name theirs: its title, as labels do
        name = methods.get(method).title if method else ""
        seen.setdefault(
            name, f"{r['search_trials']} trials, {r['search_device_hours']:.3g} {unit}-h"
        )
    if not seen:
        return ""
    parts = [f"{name} {text}" if name else text for name, text in seen.items()]
    return "search (inherited warm-up counted once): " + "; ".join(parts)


def mean_std(mean: float | None, std: float | None, sep: str = " ± ") -> str:
    """A mean over seeds with its std, in percent: '56.3 ± 2.4' (std absent for one seed); the
    terminal's table passes sep='±' to save two columns per metric."""
    if mean is None:
        return "—"
    return f"{100 * mean:.1f}" + (f"{sep}{100 * std:.1f}" if std is not None else "")


_LEAD = ("over", "mean", "low", "high", "verdict")  # the confirm table's lead_* columns


def _lead_line(rows: list[dict[str, Any]], key: str) -> str:
    """'lead: CFA #3 over WAT #5 in worst, +4.1 [-2.0, +10.2]: no clear difference (...)', or ''."""
    for r in rows:
        if r.get("lead_over"):
            ci = (
                f" [{100 * r['lead_low']:+.1f}, {100 * r['lead_high']:+.1f}]"
                if r["lead_low"] is not None
                else ""
            )
            return (
                f"lead: {r['config']} over {r['lead_over']} in {key}, paired by seed: "
                f"{100 * r['lead_mean']:+.1f}{ci}, {r['lead_verdict']}"
            )
    return ""


def _diff(row: dict[str, Any]) -> str:
    if row.get("diff") is None:
        return "—"
    ci = (
        f" [{100 * row['diff_low']:+.1f}, {100 * row['diff_high']:+.1f}]"
        if row.get("diff_low") is not None
        else ""
    )
    return f"{100 * row['diff']:+.1f}{ci}"


def _short_verdict(row: dict[str, Any]) -> str:
    """The stored verdict, shortened for the terminal: which way, or that the
    interval includes 0."""
    if row["role"] == BASELINE:
        return "baseline"
    low, high = row.get("diff_low"), row.get("diff_high")
    if low is None or high is None:
        return row.get("verdict") or "—"
    return "higher (excl. 0)" if low > 0 else "lower (excl. 0)" if high < 0 else "includes 0"


def confirmed_table(out: Path, spec: SweepSpec) -> Table:
    """The confirm stage's table: each config and the PGD-AT baseline on the test split, mean ± std
    over seeds, the paired difference to PGD-AT with its interval and in words, the search value
    beside; in %. and the cost: device-hours of one seed (the inherited warm-up included) and their
    paired ratio to PGD-AT's. The configs' knobs are listed under it, so that it
    fits 120 columns."""
    robust, rows = paper_rows(out, spec)
    counts = sorted({r["seeds"] for r in rows if r.get("seeds") is not None})
    # seeds in rounds: each config's own count is its n
    seeds = (
        (
            f"{counts[0]} seeds"
            if len(counts) == 1
            else f"{counts[0]} to {counts[-1]} seeds (n: each row's)"
        )
        if counts
        else "0 seeds"
    )
    conf = round(100 * spec.confirm.confidence, 6)
    key = next((r["diff_metric"] for r in rows if r.get("diff_metric")), "worst")
    names = knob_names(list(spec.search.space))
    interval = (
        "t-interval"
        if sequential.design(spec.confirm) is None
        else "group-sequential interval (seeds in rounds: n says how many)"
    )
    title = (
        f"{spec.name}: confirmed on the test split, {seeds}, robust = {robust}; "
        f"in %, mean±std over seeds; val: the validation {spec.objective.primary} that chose it; "
        f"Δ {key} vs PGD-AT paired by seed, {conf:g}% {interval}; "
        f"{results.device_label(rows)}-h: device-hours of one seed, "
        "the inherited warm-up included; ×PGD-AT: its ratio to PGD-AT's, paired by seed"
    )
    knobs = [
        f"{r['config']} {text}"
        for r in rows
        if r["role"] != BASELINE
        # the label names the method
        and (text := knobs_text(_own(spec, {k: r.get(k) for k in names}, False), names))
    ]
    table = _terminal_table(
        title,
        "\n".join(
            filter(
                None,
                [
                    _lead_line(rows, key),
                    _search_line(rows, results.device_label(rows)),
                    "configs: " + "; ".join(knobs) if knobs else "",
                    knob_legend(names),
                ],
            )
        ),
    )
    cells = [_confirmed_cells(r) for r in rows]
    headers = [
        "config",
        "n",
        "val",
        "worst",
        "CVaR",
        "mean",
        "clean",
        f"Δ {key} vs PGD-AT",
        "verdict",
        f"{results.device_label(rows)}-h",
        "×PGD-AT",
    ]
    _add_columns(
        table,
        [
            (h, "text" if h == "verdict" else "number", [c[i] for c in cells])
            for i, h in enumerate(headers)
        ],
    )
    table.columns[0].justify = "left"  # the config's label
    for r, row in zip(rows, cells, strict=True):
        table.add_row(*map(Text, row), end_section=r["role"] == BASELINE)
    return table


def _confirmed_cells(r: dict[str, Any]) -> list[str]:
    return [
        r["config"],
        str(r["seeds"]),
        pct(r["search_value"]),
        *[mean_std(r.get(f"{m}_mean"), r.get(f"{m}_std"), sep="±") for m in (*_COLUMNS, "clean")],
        _diff(r),
        _short_verdict(r),
        *cost_cells(r),
    ]


def cost_cells(r: dict[str, Any]) -> list[str]:
    """Device-hours per seed (own + the inherited warm-up) and the paired ratio to PGD-AT's ('—'
    for the baseline)."""
    # a table before schema 4
    hours = r.get("device_hours") if r.get("device_hours") is not None else r.get("gpu_hours")
    return [
        _hours(None if hours is None else 3600 * hours),
        f"{r['cost_ratio']:.2f}" if r.get("cost_ratio") is not None else "—",
    ]


def formatted(out: Path, spec: SweepSpec, fmt: str, top: int = 10, by: str | None = None) -> str:
    """The confirmed table (or the search's ranking when the sweep has none) as ``fmt``: csv, json
    or latex (booktabs, the best mean of each column in bold)."""
    if fmt not in FORMATS[1:]:
        raise SpecError(
            "--format", f"unknown format {fmt!r}; valid formats are {', '.join(FORMATS)}"
        )
    confirmed = results.CONFIRM in results.tables(out)
    if fmt == "latex" and not confirmed:
        raise SpecError(
            str(out),
            "has no confirmed table (confirm.seeds >= 1 makes one); "
            "--format latex writes that table, use csv or json for the ranking",
        )
    if confirmed:
        rows = paper_rows(out, spec)[1]
    else:
        rows = [
            {k: v for k, v in r.items() if k not in ("started", "ended")}
            for r in top_trials(out, top, by or spec.objective.primary)
        ]
    if fmt == "json":
        import json

        return json.dumps(rows, indent=1, default=str)
    if fmt == "csv":
        return _csv(rows)
    return _latex(rows, spec)


def _csv(rows: list[dict[str, Any]]) -> str:
    import csv
    import io

    buf = io.StringIO()
    columns = list(dict.fromkeys(k for r in rows for k in r))
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _tex(text: str) -> str:
    for a, b in (
        ("\\", "\\textbackslash{}"),
        ("_", "\\_"),
        ("#", "\\#"),
        ("%", "\\%"),
        ("&", "\\&"),
    ):
        text = text.replace(a, b)
    return text


def _latex(rows: list[dict[str, Any]], spec: SweepSpec) -> str:
    """booktabs: config, knobs, then mean ± std per metric (the best mean in bold), Δ to PGD-AT,
    GPU-hours of a seed and their ratio to PGD-AT's, the trials and GPU-hours of the search that
    chose the config."""
    keys = list(spec.search.space)
    metrics = (*_COLUMNS, "clean")
    best = {
        m: max((r[f"{m}_mean"] for r in rows if r.get(f"{m}_mean") is not None), default=None)
        for m in metrics
    }
    short = short_names(keys)  # wat.eta and faal.eta stay apart
    head = [
        "config",
        *[_tex(short[k]) for k in keys],
        "worst",
        "CVaR",
        "mean",
        "clean",
        "$\\Delta$ vs PGD-AT",
        f"{results.device_label(rows)}-h",
        "cost $\\times$ PGD-AT",
        "trials",
        f"search {results.device_label(rows)}-h",
    ]
    lines = [
        "\\begin{tabular}{" + "l" + "r" * (len(head) - 1) + "}",
        "\\toprule",
        " & ".join(head) + " \\\\",
        "\\midrule",
    ]
    for r in rows:
        # a row's own knobs only: another method's (or PGD-AT's missing) value is an empty cell
        own = _own(spec, {k: r.get(k) for k in keys}) if r["role"] != BASELINE else {}
        cells = [
            _tex(r["config"]),
            *[_tex(param_text(k, own[k])) if k in own else "" for k in keys],
        ]
        for m in metrics:
            text = (
                mean_std(r.get(f"{m}_mean"), r.get(f"{m}_std"))
                .replace("±", "$\\pm$")
                .replace("—", "--")
            )
            cells.append(
                f"\\textbf{{{text}}}"
                if r.get(f"{m}_mean") is not None and r[f"{m}_mean"] == best[m]
                else text
            )
        cells += [_diff(r).replace("—", "--"), *(c.replace("—", "--") for c in cost_cells(r))]
        # what the config's method's search spent to choose it (the baseline: --)
        trials, hours = r.get("search_trials"), r.get("search_device_hours")
        seconds = None if hours is None else hours * 3600
        cells += [str(trials) if trials is not None else "--", _hours(seconds).replace("—", "--")]
        lines.append(" & ".join(cells) + " \\\\")
        if r["role"] == BASELINE:
            lines.append("\\midrule")
    if lines[-1] == "\\midrule":
        lines.pop()
    return "\n".join([*lines, "\\bottomrule", "\\end{tabular}"]) + "\n"
