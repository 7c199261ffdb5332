"""How the printed tables show a sweep's numbers and knobs: ``hamsweep results``' tables
(``hamsweep.results.tables``) and the live dashboard's (``hamsweep.sweep.dashboard``) alike, so that
both fit 120 columns without cutting a number. Accuracies in percent with one decimal (``pct``);
the searched knobs in one column by their paper symbols (``knobs_text``, ``τ=.49 ρ=.36 T=u M=5
w=60``, explained by ``knob_legend`` under the table); every number column unwrapped and at least
as wide as its widest cell (``numeric_column``). Only rich and the standard library here.
"""

from __future__ import annotations

import math
from typing import Any

from rich.cells import cell_len
from rich.table import Table

__all__ = [
    "DASH",
    "knob_legend",
    "knob_names",
    "knobs_column",
    "knobs_text",
    "numeric_column",
    "param_text",
    "pct",
    "short_names",
]

DASH = "—"  # a cell with no value


def pct(x: float | None) -> str:
    """An accuracy in [0, 1] as percent with one decimal, as every table shows it: 0.494 ->
    '49.4'."""
    return DASH if x is None or math.isnan(x) else f"{100 * x:.1f}"


def numeric_column(table: Table, header: str, cells: list[str], **kw: Any) -> None:
    """A column of numbers that are never cut: no wrapping, and at least as wide as its widest cell
    or header line (rich shrinks the text columns first; a table still too wide for the terminal
    runs past its right edge, where the terminal crops it, rather than showing '0.4…')."""
    # the header's lines count too: a cut header hides what the numbers are
    widest = max((cell_len(line) for c in [*cells, header] for line in c.splitlines()), default=1)
    table.add_column(
        header, justify=kw.pop("justify", "right"), no_wrap=True, min_width=widest, **kw
    )


# HAM's searched knobs by the paper's symbols, so that a row's knobs fit one short column:
# "τ=.49 ρ=.36 T=2 M=5 w=60", explained by a legend line under the table
_SYMBOLS = {
    "ham.discard_threshold": "τ",
    "ham.keep_easy_fraction": "ρ",
    "ham.temperature": "T",
    "ham.drop_step": "M",
    "ham.warmup_epochs": "w",
    "ham.loss_normalization": "norm",
}


def knob_names(keys: list[str]) -> dict[str, str]:
    """key -> its short name: a HAM knob's symbol, else its field name (the whole key where that is
    ambiguous: two sections share the field, or it is one of the symbols)."""
    others = short_names([k for k in keys if k not in _SYMBOLS])
    taken = set(_SYMBOLS.values())
    return {k: _SYMBOLS.get(k) or (others[k] if others[k] not in taken else k) for k in keys}


def _knob_value(key: str, value: Any) -> str:
    """Two significant digits without the leading zero of a fraction (0.494 -> '.49'); 'u' for a
    temperature of None (uniform weights); three digits from 1 on."""
    if value is None:
        return "u" if key.endswith("temperature") else DASH
    if isinstance(value, bool) or not isinstance(value, float):
        return str(value)
    if value == 0 or abs(value) >= 1:
        text = f"{value:.3g}"
        return text if "e" not in text else f"{value:.0f}"
    text = f"{value:.2g}" if abs(value) >= 1e-3 else f"{value:.1e}".replace("e-0", "e-")
    return text.replace("0.", ".", 1) if text.startswith(("0.", "-0.")) else text


def knobs_text(params: dict[str, Any], names: dict[str, str]) -> str:
    """A row's knobs in one cell, 'τ=.49 ρ=.36 T=u' ('=' binds each pair: text that wraps breaks
    between pairs, never inside one)."""
    return " ".join(f"{names[k]}={_knob_value(k, params[k])}" for k in names if k in params)


def knob_legend(names: dict[str, str]) -> str:
    """The legend line under a table with a knobs column."""
    parts = [
        f"{short} = {key}" + (" (u: uniform weights)" if key.endswith("temperature") else "")
        for key, short in names.items()
        if short != key
    ]
    return "knobs: " + ", ".join(parts) if parts else ""


def knobs_column(table: Table, cells: list[str], header: str = "knobs") -> None:
    """The knobs column, numbers: never cut, never wrapped (a wrapped one doubles every row's
    height, so the text columns shrink instead)."""
    numeric_column(table, header, cells, justify="left")


def param_text(key: str, value: Any) -> str:
    """A sampled value, compactly: floats to 3 significant digits; None means uniform for a
    temperature (the confirmed table's LaTeX cells, the dashboard's sampler line)."""
    if value is None:
        return "uniform" if key.endswith("temperature") else DASH
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def short_names(keys: list[str]) -> dict[str, str]:
    """'section.field' -> 'field', keeping the full key where two sections share a field name."""
    tails = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: t if tails.count(t) == 1 else k for k, t in zip(keys, tails, strict=True)}
