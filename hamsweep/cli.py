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
            print(
                "hamsweep: interrupted; continue it with --resume (a sweep: hamsweep resume DIR)",
                file=sys.stderr,
            )
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


@app.command()
@_friendly
def validate(
    spec: Path = typer.Argument(..., help="a spec file, e.g. search_spaces/smoke.yaml"),
    cluster: Path | None = typer.Option(
        None,
        "--cluster",
        help="also check a cluster profile, e.g. cluster/slurm.yaml, against this machine",
    ),
    out: Path | None = typer.Option(
        None,
        "--out",
        help=(
            "the sweep folder run would write (default runs/<name>-<time>, or the profile's "
            "shared_folder)"
        ),
    ),
    overrides: list[str] = typer.Option(
        [],
        "--set",
        help=(
            "override one fixed key of the spec, as run takes it, e.g. --set train.epochs=3 "
            "(repeatable)"
        ),
    ),
    timed: bool = typer.Option(
        False,
        "--time",
        help=(
            "also time a few training batches of each method on this machine's device and "
            "predict the sweep's GPU-hours (CPU-hours for a spec without GPUs); on a GPU node"
        ),
    ),
) -> None:
    """Check a spec file and what `hamsweep run` with the same arguments will need (the data, the
    cluster profile against this machine, the sweep folder's disk); print what it would run. Nothing
    is written, started or submitted; what cannot be checked from here is a warning line."""
    from hamsweep.launch.preflight import preflight
    from hamsweep.spec.cluster import load_profile

    s = _load_with_overrides(spec, overrides)
    profile = load_profile(cluster) if cluster is not None else None
    checks = preflight(s, out, profile)
    searched = ", ".join(s.search.space) or "nothing"
    print(
        f"{spec}: {s.data.name} / {s.model.name} / {' vs '.join(s.methods)}, "
        f"{s.train.epochs} epochs; "
        f"searches {searched}"
    )
    sched = (
        f"ASHA (grace {s.scheduler.grace_period} epochs)"
        if s.scheduler.name == "asha"
        else "no early stopping"
    )
    print(
        f"sweep: {_trials_text(s)} by {s.search.sampler}, {s.search.max_concurrent} at "
        f"once, {sched}; maximises validation {' + '.join(s.objective.metrics)}; "
        f"{s.resources.cpu:g} CPU + {s.resources.gpu:g} GPU per trial"
    )
    print(_sharing(s))
    if s.search.methods:
        print(_per_method(s))
    if own := _own_schedules(s):
        print(own)
    print(_confirming(s))
    from hamsweep.sweep.disk import disk_needed, reserve, size_text

    print(
        f"disk: about {size_text(disk_needed(s))} in the sweep folder (two checkpoints a trial, "
        f"the trunks' fork checkpoints, the tables), and {size_text(reserve(s))} kept free while "
        "it runs; checked before a run starts and every second while it runs, with the disk kept "
        "under Ray's 95%"
    )
    if profile is not None:
        print(f"{cluster}: {profile.describe()}")
    if timed:
        print(_timed(s))
    for warning in checks.warnings:
        print(f"warning: {warning}")
    print(checks.verdict())


def _trials_text(s: Any) -> str:
    """'8 trials', or for a comparison '3 trials for each of ham, cfa, trades (9; each method its
    own sampler)'."""
    if not s.search.methods:
        return f"{s.search.trials} trials"
    names = ", ".join(s.search.methods)
    if s.search.method_hours is not None:
        unit = f"{s.resources.device.upper()}-hours"
        return (
            f"{s.search.method_hours:g} {unit} of search for each of {names}, up to "
            f"{s.search.num_samples} trials each (a cheaper method gets more; each method its "
            "own sampler)"
        )
    return (
        f"{s.search.num_samples} trials for each of {names} ({s.search.trials}; each method its "
        "own sampler)"
    )


def _sharing(s: Any) -> str:
    """What shared warm-ups make of the spec: its trunks, the disk they
    take, the predicted saving."""
    from hamsweep.sweep.trunk import checkpoint_bytes, plan, predicted_cost

    p, cost = plan(s), predicted_cost(s)
    if not p.shared:
        return f"shared warm-up: none ({p.reason}); about {cost.without:.0f} training epochs"
    lo, hi = p.fork_epochs[0], p.fork_epochs[-1]
    size = cost.checkpoints * checkpoint_bytes(s)
    disk = f"{size / 1e9:.2g} GB" if size >= 1e9 else f"{size / 1e6:.2g} MB"
    n = len(p.trunks)
    trunks = (
        f"{n} PGD-AT trunk{'s' if n > 1 else ''} of {s.train.epochs} epochs (the PGD-AT baseline)"
        if not s.schedules()
        else f"{n} PGD-AT trunk{'s' if n > 1 else ''} (each a PGD-AT baseline): "
        + "; ".join(f"{t.epochs} epochs, forked by {', '.join(t.methods)}" for t in p.trunks)
    )
    return (
        f"shared warm-up: {trunks}, forks from epochs {lo}..{hi}; "
        f"{cost.checkpoints} trunk checkpoints, {disk}; predicted training epochs "
        f"{cost.shared:.0f} instead of {cost.without:.0f} ({cost.ratio:.2f}x)"
    )


def _own_schedules(s: Any) -> str:
    """The methods of a comparison trained on a schedule of their own (``search.methods.M.set``),
    and what that gives them: their own trunk, their own PGD-AT baseline. Empty when none is."""
    from hamsweep.sweep.trunk import plan

    schedules, p, base = s.schedules(), plan(s), s.schedule()
    own = [m for m, sched in schedules.items() if sched != base]
    if not own:
        return ""

    def what(m: str) -> str:
        values = ", ".join(f"{k}={v}" for k, v in schedules[m].items() if base[k] != v)
        forks = [t for t in p.trunks if m in t.methods]
        alone = forks and all(t.methods == (m,) for t in forks)
        trunk = "forks from a PGD-AT trunk of its own, " if alone else ""
        return f"{m} ({values}): {trunk}paired with PGD-AT on its schedule"

    return "own schedules (search.methods.M.set): " + "; ".join(map(what, own))


def _per_method(s: Any) -> str:
    """A comparison's predicted search cost per method: what the equal-trials budget gives each."""
    from hamsweep.sweep.trunk import predicted_cost

    unit = f"{s.resources.device.upper()}-epochs"
    cells = ", ".join(
        f"{m} {e * s.resources.devices:.0f}" for m, e in predicted_cost(s).methods.items()
    )
    return (
        f"search per method: {s.search.num_samples} trials each, predicted {unit} after their "
        f"fork (the shared trunk not counted): {cells}"
    )


def _timed(s: Any) -> str:
    """``validate --time``: each method's epoch measured here, and the predicted device-hours."""
    from hamsweep.sweep.hours import measure, predict

    times = measure(s)
    h = predict(s, times)
    unit = f"{s.resources.device.upper()}-hours"
    device = next(iter(times.values())).device
    epochs = ", ".join(f"{m} {t.epoch(s.eval.every_epochs):.3g} s" for m, t in times.items())
    search = ", ".join(
        f"{m} {hours:.3g} ({h.trials[m]:.3g} trials)" for m, hours in h.search.items()
    )
    short = [m for m, n in h.trials.items() if s.search.method_hours is not None and n < 1]
    warning = (
        f"\nwarning: search.method_hours ({s.search.method_hours:g}) is predicted to fit less than "
        f"one trial of {', '.join(short)}: the budget would stop it before its last epoch, and "
        "a method with no complete trial has nothing to confirm; raise search.method_hours"
        if short
        else ""
    )
    return (
        f"timed here on {device} (5 training batches and 5 validation batches a method, at its "
        f"defaults; per-epoch hooks and the test split's attacks not timed): an epoch of "
        f"{epochs}\npredicted {unit}: search {search}; the trunks {h.trunks:.3g}; the confirm "
        f"stage's first round {h.confirm:.3g}; in all {h.total:.3g}{warning}"
    )


def _confirming(s: Any) -> str:
    """What the confirm stage will train, and its predicted cost against the search's."""
    from hamsweep.sweep.confirm import confirm_cost, confirms_trades, new_seeds
    from hamsweep.sweep.trunk import predicted_cost

    c = s.confirm
    if not c.top_k:
        return "confirm: off (confirm.top_k: 0); the test split is never used"
    if not c.retrains:
        return (
            f"confirm: the {c.top_k} best search trials' own checkpoints on the test split "
            "(confirm.seeds: 0: one seed, no interval)"
        )
    epochs, trials = confirm_cost(s)
    search = predicted_cost(s).shared
    seeds = ", ".join(map(str, new_seeds(s)))
    if c.max_seeds is not None:
        seeds += (
            f", then {c.round_seeds} more a round while a config's difference to PGD-AT is "
            f"undecided, up to {c.max_seeds} (group-sequential t-test, {c.spending} spending; "
            "the cost below is the first round's)"
        )
    aa = " and AutoAttack" if c.autoattack else ""
    return (
        f"confirm: the {c.top_k} best configs{' of each method' if s.search.methods else ''}"
        f"{', TRADES at its defaults' if confirms_trades(s) else ''} and "
        f"PGD-AT on train.seed {seeds}, on the test split "
        f"(PGD-{s.eval.attack_steps}{aa}): {trials} trials, predicted {epochs:.0f} training "
        f"epochs, {epochs / search:.2f}x the search's {search:.0f}"
    )


@app.command()
@_friendly
def train(
    spec: Path = typer.Argument(
        ..., help="a spec file; its searched parameters take their defaults"
    ),
    overrides: list[str] = typer.Option(
        [], "--set", help="override one key, e.g. --set ham.drop_step=3 (repeatable)"
    ),
    out: Path | None = typer.Option(None, "--out", help="run folder (default runs/<name>-<time>)"),
    resume: bool = typer.Option(
        False, "--resume", help="continue the run in --out from its last checkpoint"
    ),
) -> None:
    """Run one trial with the spec's defaults (and --set overrides); results
    go to Parquet in --out."""
    from hamsweep.spec import load_spec, parse_overrides

    s = load_spec(spec)
    cfg = s.trial_config(parse_overrides(overrides))
    if resume and out is None:
        raise SpecError("--resume", "needs --out DIR, the run folder to continue")
    from hamsweep.sweep.standalone import train_one

    train_one(s.name, cfg, out, resume=resume)


@app.command()
@_friendly
def run(
    spec: Path = typer.Argument(..., help="a spec file, e.g. search_spaces/smoke.yaml"),
    out: Path | None = typer.Option(
        None,
        "--out",
        help="sweep folder (default runs/<name>-<time>, or the profile's shared_folder)",
    ),
    resume: Path | None = typer.Option(
        None, "--resume", help="continue the sweep in this folder (same spec)"
    ),
    cluster: Path | None = typer.Option(
        None, "--cluster", help="a cluster profile, e.g. cluster/slurm.yaml (default: this machine)"
    ),
    detach: bool = typer.Option(
        False,
        "--detach",
        help="with a SLURM profile: submit and return (watch with hamsweep status)",
    ),
    address: str | None = typer.Option(
        None,
        "--address",
        help="a running Ray cluster (ray://host:10001 or host:6379); default: start a local Ray",
    ),
    overrides: list[str] = typer.Option(
        [],
        "--set",
        help="override one fixed key of the spec, e.g. --set train.epochs=3 (repeatable)",
    ),
) -> None:
    """Sweep the spec's searched parameters: Ray Tune + Optuna + ASHA; results to Parquet."""
    s = _load_with_overrides(spec, overrides)
    if resume is not None and out is not None and out.resolve() != resume.resolve():
        raise SpecError(
            "--resume", "names the sweep folder to continue; drop --out (or give the same folder)"
        )
    _launch(
        s, resume or out, resume=resume is not None, cluster=cluster, detach=detach, address=address
    )


@app.command()
@_friendly
def resume(
    folder: Path = typer.Argument(..., help="a sweep folder (holds spec.yaml)"),
    cluster: Path | None = typer.Option(
        None, "--cluster", help="a cluster profile to continue on (default: this machine)"
    ),
    detach: bool = typer.Option(False, "--detach", help="with a SLURM profile: submit and return"),
    address: str | None = typer.Option(
        None, "--address", help="a running Ray cluster; default: start a local Ray"
    ),
) -> None:
    """Continue a sweep whose driver stopped (killed, preempted, out of time) from its folder."""
    from hamsweep import rundir
    from hamsweep.spec import SweepSpec, validate

    if not (folder / rundir.SPEC).is_file():
        raise SpecError(str(folder), f"holds no {rundir.SPEC}: not a sweep folder")
    s = validate(SweepSpec, rundir.read_spec(folder))
    _launch(s, folder, resume=True, cluster=cluster, detach=detach, address=address)


def _launch(
    spec: Any,
    out: Path | None,
    *,
    resume: bool,
    cluster: Path | None,
    detach: bool,
    address: str | None,
) -> None:
    from hamsweep.launch import launch
    from hamsweep.spec.cluster import CloudProfile, LocalProfile, load_profile

    profile = (
        load_profile(cluster)
        if cluster is not None
        else _launched_profile(out, resume, address) or LocalProfile()
    )
    if isinstance(profile, CloudProfile):
        raise SpecError("--cluster", profile.message)
    if address is not None and not isinstance(profile, LocalProfile):
        raise SpecError(
            "--address",
            "runs the driver here on a running Ray cluster; "
            "it cannot be combined with a SLURM --cluster",
        )
    launch(spec, out, profile=profile, resume=resume, detach=detach, address=address)


def _launched_profile(out: Path | None, resume: bool, address: str | None) -> Any:
    """A resumed SLURM sweep goes back to SLURM with the profile it was launched with."""
    from hamsweep.launch import launched_profile

    if not resume or out is None or address is not None:
        return None
    profile = launched_profile(out)
    if profile is not None:
        print(
            f"continuing on SLURM with the profile of {out}/launch.json (--cluster "
            "cluster/local.yaml runs it here)",
            file=sys.stderr,
        )
    return profile


@app.command()
@_friendly
def status(
    folder: Path = typer.Argument(..., help="a sweep folder"),
    watch: bool = typer.Option(
        False,
        "--watch",
        help=(
            "redraw every 2 s until the sweep ends or its driver falls silent (Ctrl-C stops "
            "watching only)"
        ),
    ),
) -> None:
    """Where a sweep runs and its dashboard, from any machine that sees its folder."""
    from hamsweep import launch
    from hamsweep.sweep.driver import wide_console

    _sweep_spec(folder)
    console = wide_console()
    if watch:
        job = launch.watch(folder, console)
        if job is not None and job.ok is False:
            raise typer.Exit(1)
        return
    frame, _ = launch.status_frame(folder)
    console.print(frame)


@app.command()
@_friendly
def cancel(folder: Path = typer.Argument(..., help="a sweep folder")) -> None:
    """Stop a sweep wherever it runs (scancel on SLURM, Ctrl-C locally); the folder stays resumable.
    A driver that is not running (its PID now another process's included) is never
    signalled: exit code 1."""
    from hamsweep import launch
    from hamsweep.sweep.driver import wide_console

    _sweep_spec(folder)
    console = wide_console()
    launch.cancel(folder, console)
    console.print(
        f"cancelled; continue it later with: hamsweep resume {folder}",
        highlight=False,
        soft_wrap=True,
    )


@app.command()
@_friendly
def results(
    folder: Path = typer.Argument(..., help="a sweep folder"),
    top: int = typer.Option(10, "--top", help="how many trials to show"),
    by: str | None = typer.Option(
        None, "--by", help="rank by this validation metric (default: the objective)"
    ),
    fmt: str = typer.Option(
        "table",
        "--format",
        help=(
            "table (the terminal), or csv, json, latex: the confirmed table (csv, json: the "
            "ranking without one)"
        ),
    ),
) -> None:
    """The confirmed table of a sweep (its winners and PGD-AT over seeds, on the test split), then
    the search's best trials with their parameters and summary metrics."""
    from hamsweep.results import store
    from hamsweep.results.tables import confirmed_table, formatted, results_table
    from hamsweep.sweep.driver import wide_console

    spec = _sweep_spec(folder)
    if fmt != "table":
        sys.stdout.write(formatted(folder, spec, fmt, top=top, by=by))
        return
    console = wide_console()
    if store.CONFIRM in store.tables(folder):
        console.print(confirmed_table(folder, spec))
    console.print(results_table(folder, spec, top=top, by=by))


@app.command()
@_friendly
def report(
    folder: Path = typer.Argument(..., help="a sweep folder (running or finished)"),
    out: Path | None = typer.Option(
        None, "--out", help="where to write the report (default DIR/report)"
    ),
    open_it: bool = typer.Option(False, "--open", help="open index.html in a browser afterwards"),
) -> None:
    """The sweep's figures as one self-contained HTML page and each as PNG and PDF."""
    from hamsweep.report import build_report

    index = build_report(folder, out)
    print(f"report: {index} (each figure also as .png and .pdf beside it)")
    if open_it:
        import webbrowser

        webbrowser.open(index.resolve().as_uri())


@app.command()
@_friendly
def evaluate(
    folder: Path = typer.Argument(..., help="a sweep folder"),
    top: int = typer.Option(1, "--top", help="evaluate this many of the best completed trials"),
    autoattack: bool = typer.Option(False, "--autoattack", help="also run AutoAttack (standard)"),
) -> None:
    """Evaluate the best trials' best checkpoints on the test split (per class, into `classes`)."""
    from hamsweep.sweep.confirm import evaluate_top

    evaluate_top(folder, _sweep_spec(folder), top, autoattack=autoattack)


def _sweep_spec(folder: Path) -> Any:
    from hamsweep import rundir
    from hamsweep.spec import SweepSpec, validate

    if not (folder / rundir.SPEC).is_file():
        raise SpecError(str(folder), f"holds no {rundir.SPEC}: pass a sweep folder")
    return validate(SweepSpec, rundir.read_spec(folder))


def _load_with_overrides(path: Path, overrides: list[str]) -> Any:
    """The spec file with its ``--set`` overrides, as ``run`` reads it and
    ``validate`` checks it."""
    from hamsweep.spec import load_spec, parse_overrides

    return _with_overrides(load_spec(path), parse_overrides(overrides))


def _with_overrides(spec: Any, overrides: dict[str, Any]) -> Any:
    """The spec with fixed keys overridden (``--set``); a searched key cannot be fixed this way."""
    from hamsweep.spec import SweepSpec, validate

    if not overrides:
        return spec
    data = spec.model_dump(mode="json")
    for key, value in overrides.items():
        if key in spec.search.space:
            raise SpecError(
                key, "is searched (search.params or search.methods); change its range in the spec"
            )
        section, _, field = key.partition(".")
        if section not in data or not isinstance(data[section], dict) or field not in data[section]:
            raise SpecError(key, "unknown key; use section.field as in the spec, e.g. train.epochs")
        data[section][field] = value
    return validate(SweepSpec, data)


@app.command()
@_friendly
def query(
    folder: Path = typer.Argument(
        ..., help="a run or sweep folder (holds epochs/, classes/, trials/)"
    ),
    sql: str = typer.Argument(..., help="SQL over the views trials, epochs and classes"),
    fmt: str = typer.Option("table", "--format", help="table, csv or json"),
) -> None:
    """Answer SQL over a run's Parquet tables (DuckDB; views `trials`, `epochs`, `classes`)."""
    from hamsweep.results.query import run

    run(folder, sql, fmt)  # a plain command line comes here without typer: hamsweep._entry


def main() -> None:
    app()


if __name__ == "__main__":
    main()
