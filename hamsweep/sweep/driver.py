"""The sweep driver: spec -> Ray Tune (Optuna proposes, ASHA stops, the Recorder writes) -> Parquet,
then the confirm stage (in the same Tune run), compaction and the tables.

Ray is started here, for this sweep only, unless ``address`` names a running cluster: bound to
127.0.0.1, token auth on with a per-sweep token file (mode 0600) in the sweep folder, its session
folder a short path of its own (it holds unix sockets), never ``~/.ray``. A driver killed at any
moment leaves a folder that ``resume`` continues: Tune's experiment state is snapshotted every
second, the Optuna journal is append-only, and Parquet parts are renamed into place.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import shutil
from pathlib import Path
from typing import Any

from rich.console import Console

from hamsweep import rundir
from hamsweep.errors import Interrupted, RestoreFailed, SpecError
from hamsweep.spec import SweepSpec, validate
from hamsweep.sweep import disk
from hamsweep.sweep.jobs import TrialJobs

__all__ = [
    "RAY_DIR",
    "TOKEN",
    "TrialJobs",
    "check_fits_here",
    "check_room",
    "drive",
    "prepare_sweep",
    "resolve_spec",
    "run_sweep",
    "wide_console",
]

RAY_DIR = "ray"  # Tune's experiment folder inside the sweep folder (state, trials, checkpoints)
TOKEN = "ray_token"  # Ray's auth token for this sweep, mode 0600
MAX_FAILURES = 3  # restarts of a crashed trial from its last checkpoint

# Tune snapshots its state at most every 10 s by default while the Optuna journal is written at
# once: after a SIGKILL the two disagree. One second keeps them close (read at import of ray.tune,
# so it is set before, identically when resuming). The rest silences Ray's console and its
# CSV/JSON/TensorBoard loggers: Parquet is the store, the dashboard is the view.
_TUNE_ENV = {
    "TUNE_GLOBAL_CHECKPOINT_S": "1",
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
    "RAY_AIR_NEW_OUTPUT": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
}


def wide_console() -> Console:
    """A console for the driver: logs (not a terminal) get wide lines
    instead of rich's 80 columns."""
    import sys

    return Console() if sys.stdout.isatty() else Console(width=200)


def resolve_spec(spec: SweepSpec) -> SweepSpec:
    """``data.root`` made absolute: trials run in their own folders (and on other nodes)."""
    data = spec.model_dump(mode="json")
    data["data"]["root"] = str(Path(spec.data.root).expanduser().resolve())
    return validate(SweepSpec, data)


def run_sweep(
    spec: SweepSpec,
    out: Path | None,
    *,
    resume: bool = False,
    address: str | None = None,
    console: Console | None = None,
) -> Path:
    """Run (or resume) the sweep into ``out``; every input is checked before anything starts."""
    out = prepare_sweep(spec, out, resume=resume, check_here=address is None)
    return drive(out, address=address, console=console)


def prepare_sweep(
    spec: SweepSpec, out: Path | None, *, resume: bool, check_here: bool = True
) -> Path:
    """Check everything a sweep needs, then write its folder's spec, manifest and token: what a
    driver, here or in a cluster job, starts from. ``check_here``: trials must fit this machine."""
    out = Path(out if out is not None else rundir.default_out(spec.name)).resolve()
    rundir.prepare(out, resume=resume)
    spec = resolve_spec(spec)
    if resume:
        from hamsweep.results.store import check_schema

        check_schema(out)  # first: a newer hamsweep's folder is left as it is, never repaired
        _check_same_spec(out, spec)
        _set_aside_damage(out)
    check_room(spec, out, check_here=check_here)
    _check_data(spec)
    rundir.write_spec(out, spec.model_dump(mode="json"))
    rundir.write_manifest(out, resumed=resume)
    _token(out)
    return out


def check_room(spec: SweepSpec, out: Path, *, check_here: bool) -> None:
    """Room for the sweep, checked before anything is written
    (``prepare_sweep``, ``hamsweep validate``): ``check_here`` (its Ray runs on this machine):
    trials that fit this machine, and the disk of Ray's session folder; always: the disk of
    ``out``."""
    if check_here:
        check_fits_here(spec)
    disk.check_before(spec, out, _ray_temp_dir(out) if check_here else None)


def drive(
    out: Path,
    *,
    address: str | None = None,
    console: Console | None = None,
    jobs: TrialJobs | None = None,
) -> Path:
    """Run the sweep of a prepared folder to its end, continuing from its state if it has any.
    ``address``: a running Ray cluster (its auth from the environment); None = start a local Ray.
    ``jobs``: where trials train when not in Ray's workers (SLURM mode jobs);
    None = in Ray's workers."""
    console = console or wide_console()
    spec = validate(SweepSpec, rundir.read_spec(out))
    temp = _ray_temp_dir(out)
    try:
        _start_ray(address, out / TOKEN, temp)
        if jobs is not None:
            jobs.start()
        recorder = _fit(spec, out, console, jobs, temp if address is None else None)
    finally:
        if jobs is not None:
            jobs.close()
        _stop_ray(address, temp)
    if recorder.disk_full is not None:
        raise recorder.disk_full
    unfinished = recorder.unfinished()
    if unfinished and recorder.budget_hit is None:
        # Tune catches Ctrl-C itself and returns from fit() with trials left: not a finished sweep
        raise Interrupted(
            f"stopped with {unfinished} of {spec.search.trials} trials unfinished; "
            f"continue with: hamsweep resume {out}"
        )
    if recorder.budget_hit:
        console.print(
            f"{recorder.budget_hit}: {unfinished} of {spec.search.trials} trials "
            "not run to the end",
            highlight=False,
        )
    _finish(spec, out, console, recorder.tune_trials)
    return out


def _check_same_spec(out: Path, spec: SweepSpec) -> None:
    # an older spec.yaml in today's words
    saved = validate(SweepSpec, rundir.read_spec(out)).model_dump(mode="json")
    now = spec.model_dump(mode="json")
    diff = [k for k in now if saved.get(k) != now[k]]
    if diff:
        raise SpecError(
            "--resume",
            f"the spec differs from {out / rundir.SPEC} in {', '.join(diff)}; "
            "resume with the same spec",
        )


def _set_aside_damage(out: Path) -> None:
    """Damaged Parquet parts, journal tail or newest checkpoints are set aside,
    and said so (``repair``)."""
    import sys

    from hamsweep.sweep.repair import set_aside_damage

    for line in set_aside_damage(out, RAY_DIR):
        print(f"hamsweep: {line}", file=sys.stderr)


def check_fits_here(spec: SweepSpec) -> None:
    """A trial that needs more than this machine has would wait forever: say so now."""
    r = spec.resources
    cpus = os.cpu_count() or 1
    if r.cpu > cpus:
        raise SpecError(
            "resources.cpu",
            f"{r.cpu:g} CPUs per trial but this machine has {cpus}; "
            f"add --set resources.cpu={cpus} or use --address",
        )
    if r.gpu > 0:
        gpus = _gpu_count()
        if r.gpu > gpus:
            raise SpecError(
                "resources.gpu",
                f"{r.gpu:g} GPU per trial but this machine has {gpus}; add --set resources.gpu=0 "
                "to train on the CPU, or run where there are GPUs (--address, or a cluster)",
            )


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count()


def _check_data(spec: SweepSpec) -> None:
    """Load the data once in the driver: a missing dataset fails here, not in every trial."""
    from hamsweep.core import data

    data.load(spec.trial_config().data)


def _token(out: Path) -> Path:
    path = out / TOKEN
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    return path


def _ray_temp_dir(out: Path) -> Path:
    # unix socket paths must stay under ~107 bytes: a short folder named after the sweep folder
    return Path("/tmp") / f"hamsweep-{hashlib.sha1(str(out).encode()).hexdigest()[:10]}"


def _start_ray(address: str | None, token: Path, temp: Path) -> None:
    os.environ.update(_TUNE_ENV)
    if address is None:
        # a single-machine Ray binds 127.0.0.1
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        os.environ["RAY_AUTH_MODE"] = "token"
        os.environ["RAY_AUTH_TOKEN_PATH"] = str(token)
    import ray

    kwargs: dict[str, Any] = {
        "log_to_driver": False,
        "logging_level": logging.WARNING,
        "include_dashboard": False,
    }
    if address is None:
        kwargs.update(
            num_cpus=os.cpu_count(),
            num_gpus=_gpu_count(),
            object_store_memory=256 * 1024**2,
            _temp_dir=str(temp),
        )
        ray.init(**kwargs)
    else:
        ray.init(address=address, **{k: v for k, v in kwargs.items() if k != "include_dashboard"})
    for name in ("ray", "ray.tune", "ray.train"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _stop_ray(address: str | None, temp: Path) -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()
    if address is None:
        shutil.rmtree(temp, ignore_errors=True)


def _fit(
    spec: SweepSpec, out: Path, console: Console, jobs: TrialJobs | None, ray_temp: Path | None
) -> Any:
    from ray import tune

    from hamsweep.sweep import trial
    from hamsweep.sweep.dashboard import make_view
    from hamsweep.sweep.recorder import Recorder
    from hamsweep.sweep.search import restore_into_folder, resuming

    path = str(out / RAY_DIR)
    # a folder with Tune's state continues it. Not one with tuner.pkl alone (a driver killed before
    # Tune's first snapshot): Tune would restore it with num_samples 1 and never propose
    # another trial
    restore = tune.Tuner.can_restore(path) and any((out / RAY_DIR).glob("experiment_state-*.json"))
    recorder = Recorder(
        spec,
        out,
        make_view(console),
        started=_started(out),
        restored=restore,
        jobs=jobs,
        ray_temp=ray_temp,
    ).attach()
    if jobs is None:
        fn = tune.with_parameters(
            trial.trainable, spec_data=spec.model_dump(mode="json"), experiment=str(out / RAY_DIR)
        )
        trainable = tune.with_resources(fn, {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu})
    else:
        trainable = tune.with_resources(*jobs.trainable(spec, out / RAY_DIR))
    # a searcher unpickled from Tune's snapshot reads this folder's journal and trunks, wherever
    # the snapshot was written (a moved or copied folder)
    with resuming(out if restore else None):
        if restore:
            # the searcher comes back from Tune's snapshot, the Recorder from the pickled run config
            tuner = restore_into_folder(
                tune.Tuner.restore(
                    path, trainable=trainable, resume_unfinished=True, resume_errored=True
                )
            )
        else:
            tuner = _tuner(spec, out, trainable, recorder)
        refuse = _RefuseRestart(out)
        logging.getLogger(_TUNE_CONTROLLER).addFilter(refuse)
        try:
            tuner.fit()
        except Exception:
            if refuse.error is not None:
                raise refuse.error from None
            # a write of Tune's own (its state, the Optuna journal) that the full disk refused
            full = recorder.disk_full or recorder.disk_low()
            if full is None:
                raise
            raise full from None
        finally:
            logging.getLogger(_TUNE_CONTROLLER).removeFilter(refuse)
    return recorder


_TUNE_CONTROLLER = "ray.tune.execution.tune_controller"


class _RefuseRestart(logging.Filter):
    """Tune meets a snapshot it cannot restore by logging "Failed to restore the run state." and
    starting the experiment over: every trial again, under new ids, beside the rows of the old
    ones. A resume stops there instead, before any trial starts (the exception goes up through
    Tune's logging call), and says why."""

    def __init__(self, out: Path) -> None:
        super().__init__()
        self.out, self.error = out, None

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage().startswith("Failed to restore the run state") and record.exc_info:
            cause = record.exc_info[1]
            self.error = RestoreFailed(
                f"could not restore the sweep's Tune state in {self.out / RAY_DIR} "
                f"({type(cause).__name__}: {cause}); stopped before any trial started, rather "
                "than start the sweep over"
            )
            raise self.error
        return True


def _tuner(spec: SweepSpec, out: Path, trainable: Any, recorder: Any) -> Any:
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter

    from hamsweep.sweep import trial
    from hamsweep.sweep.count import trial_count
    from hamsweep.sweep.schedulers import make_scheduler
    from hamsweep.sweep.search import make_searcher

    optuna_search = make_searcher(spec, out)
    # the dashboard shows proposals waiting for a trunk epoch
    optuna_search.waiting_sink = recorder.set_waiting
    # the confirm stage, planned once the search has ended
    optuna_search.confirm_sink = recorder.set_confirm
    # a comparison's budget in device-hours: what each method has spent
    optuna_search.method_seconds = recorder.method_seconds
    searcher = ConcurrencyLimiter(optuna_search, max_concurrent=spec.search.max_concurrent)
    # Tune counts the trunks and the confirm stage as trials; the searcher says FINISHED when it has
    # handed out all
    trials = trial_count(spec)
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=make_scheduler(spec),
            num_samples=trials,
            reuse_actors=True,
            trial_dirname_creator=trial.trial_dirname,
            trial_name_creator=trial.trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=RAY_DIR,
            storage_path=str(out),
            callbacks=[recorder],
            stop=recorder,
            verbose=0,
            failure_config=tune.FailureConfig(max_failures=MAX_FAILURES),
            # every folder stays (a snapshot may name an older one);
            # their weights are pruned (trial.prune_checkpoints)
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
        ),
    )


def _started(out: Path) -> float:
    """When the sweep first started (the manifest's time), for elapsed time and the wall budget."""
    import datetime as dt
    import json

    manifest = json.loads((out / rundir.MANIFEST).read_text())
    return dt.datetime.strptime(manifest["started"], "%Y-%m-%dT%H:%M:%S%z").timestamp()


def _finish(spec: SweepSpec, out: Path, console: Console, tune_trials: set[str]) -> None:
    """Compaction, the confirm tables (or, with ``confirm.seeds: 0``, the test evaluation of the
    search's best checkpoints), and the tables: the search's ranking, then the confirmed one.
    Parquet rows of trials outside ``tune_trials`` come from trials a killed driver had started
    after Tune's last snapshot, which Tune never resumes: dropped."""
    from hamsweep.results import store as results
    from hamsweep.results import tables
    from hamsweep.sweep import confirm

    # every trial ended: Ray holds the checkpoints
    shutil.rmtree(out / RAY_DIR / "work", ignore_errors=True)
    c = spec.confirm
    if c.top_k and not c.retrains:
        confirm.evaluate_top(out, spec, c.top_k, autoattack=c.autoattack, console=console)
    results.compact(out, keep_trials=tune_trials)
    console.print(tables.results_table(out, spec, top=10))
    if c.retrains:
        if confirm.write_tables(out, spec):
            console.print(tables.confirmed_table(out, spec))
        else:
            console.print(
                "confirm stage: no search trial ran all its epochs, so none was confirmed",
                highlight=False,
            )
    table = results.CONFIRM if c.retrains else results.TRIALS
    console.print(
        f'results: {out} (query with: hamsweep query {out} "SELECT * FROM {table}")',
        highlight=False,
        soft_wrap=True,
    )
