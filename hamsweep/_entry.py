"""The ``hamsweep`` console script. ``hamsweep query DIR SQL [--format F]``, the command a live
sweep is watched with, runs here without importing typer (~0.12 s of start-up, most of a query's
wall time); every other command line, ``--help`` and any malformed ``query``
go to ``hamsweep.cli``."""

from __future__ import annotations

import sys


def main() -> None:
    args = sys.argv[1:]
    plain = _plain_query(args[1:]) if args[:1] == ["query"] else None
    if plain is None:
        from hamsweep.cli import main as cli_main

        cli_main()
        return
    from hamsweep.errors import HamsweepError
    from hamsweep.results.query import run

    try:
        run(*plain)
    except HamsweepError as err:  # as hamsweep.cli prints it
        print(f"hamsweep: error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)


def _plain_query(args: list[str]) -> tuple[str, str, str] | None:
    """(folder, sql, format) of ``DIR SQL [--format F]`` in any order; None for anything else."""
    fmt, positional, rest = "table", [], list(args)
    while rest:
        arg = rest.pop(0)
        if arg == "--format" and rest:
            fmt = rest.pop(0)
        elif arg.startswith("--format="):
            fmt = arg.split("=", 1)[1]
        elif arg.startswith("-"):
            return None
        else:
            positional.append(arg)
    return (positional[0], positional[1], fmt) if len(positional) == 2 else None
