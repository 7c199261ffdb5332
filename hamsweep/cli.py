"""The ``hamsweep`` command line. No logic lives here, and importing it imports neither torch
nor ray: ``hamsweep --help`` must answer at once. Every ``HamsweepError`` becomes one line on
stderr and its exit code (2 for the user's mistakes), never a traceback."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer

from hamsweep.errors import HamsweepError, SpecError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Sweeps of HAM adversarial training for robust fairness: per-class results you can query.",
)
F = TypeVar("F", bound=Callable[..., Any])


def _friendly(fn: F) -> F:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except HamsweepError as err:
            print(f"hamsweep: error: {err}", file=sys.stderr)
            raise typer.Exit(err.exit_code) from None
        except KeyboardInterrupt:
            print("hamsweep: interrupted; continue with --resume", file=sys.stderr)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


@app.command()
@_friendly
def validate(spec: Path = typer.Argument(..., help="a spec file, e.g. search_spaces/smoke.yaml")) -> None:
    """Check a spec file; print what it would run."""
    from hamsweep.spec import load_spec

    s = load_spec(spec)
    searched = ", ".join(s.search.params) or "nothing"
    print(f"{spec}: ok — {s.data.name} / {s.model.name} / {s.train.method}, {s.train.epochs} epochs; searches {searched}")


@app.command()
@_friendly
def train(
    spec: Path = typer.Argument(..., help="a spec file; its searched parameters take their defaults"),
    overrides: list[str] = typer.Option([], "--set", help="override one key, e.g. --set ham.drop_step=3 (repeatable)"),
    out: Path | None = typer.Option(None, "--out", help="run folder (default runs/<name>-<time>)"),
    resume: bool = typer.Option(False, "--resume", help="continue the run in --out from its last checkpoint"),
) -> None:
    """Run one trial with the spec's defaults (and --set overrides); results go to Parquet in --out."""
    from hamsweep.spec import load_spec, parse_overrides

    s = load_spec(spec)
    cfg = s.trial_config(parse_overrides(overrides))
    if resume and out is None:
        raise SpecError("--resume", "needs --out DIR, the run folder to continue")
    from hamsweep.standalone import train_one

    train_one(s.name, cfg, out, resume=resume)


@app.command()
@_friendly
def query(
    folder: Path = typer.Argument(..., help="a run folder (holds epochs/ and classes/)"),
    sql: str = typer.Argument(..., help="SQL over the views epochs and classes"),
    fmt: str = typer.Option("table", "--format", help="table, csv or json"),
) -> None:
    """Answer SQL over a run's Parquet tables (DuckDB; views `epochs` and `classes`)."""
    from hamsweep.query import FORMATS, query, render

    if fmt not in FORMATS:
        raise SpecError("--format", f"unknown format {fmt!r}; valid formats are {', '.join(FORMATS)}")
    print(render(query(folder, sql), fmt))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
