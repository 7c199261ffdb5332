"""``mode: jobs``: one SLURM job per trial. The driver runs Ray Tune on a small local Ray (in the
``hamsweep run`` process, or with ``--detach`` in a small CPU job); each Tune trial is a light proxy
that submits the trial's real work as its own submitit job, with the spec's per-trial resources, and
hands the job's results to Tune as they appear in the sweep folder: ASHA, the Recorder and the
Parquet rows see what a local sweep shows them.

Files, all in the sweep folder (seen by the login node and every compute node):

    slurm/<job>_0_log.{out,err}       every job's output (submitit's pickles beside them)
    slurm/trials/<job>.json           one per trial job, written by its proxy: trial number and id
    slurm/trial_states.json           SLURM's state of every trial job, written by the driver
    ray/work/<number>/checkpoint/     Tune's checkpoint the trial continues from (the proxy
                                      restores it)
    ray/work/<number>/jobs/<job>/     the job's own folder: checkpoint/ it trains in,
                                      results/<seq>.json its messages, copies/<seq>/ their
                                      checkpoints, done at the end (interrupted instead, when
                                      SLURM's USR2 came first)

A job writes each message after its checkpoint copy is complete, atomically (temporary file +
rename). The proxy reports the message to Tune with the copy as the checkpoint (Ray has copied it
into the trial's folder when ``tune.report`` returns) and keeps only the newest copy. SLURM is asked
once per ``POLL_S`` about all trial jobs together, by the driver. A job that ends without ``done``:
- after its time limit or a preemption (USR2 from SLURM, TIMEOUT, PREEMPTED, NODE_FAIL): the proxy
  submits a new job from the newest copy, up to the profile's ``max_requeues`` times; the trial
  goes on, no failure is counted;
- otherwise (it crashed, someone cancelled it): the proxy raises, and Tune restarts the trial from
  its last checkpoint in a new job (``FailureConfig``).
Trial jobs are never requeued by SLURM or submitit, so the messages in a job's folder come from one
run of it.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import submitit

from hamsweep.errors import JobFailed
from hamsweep.keys import NUMBER
from hamsweep.launch._slurm_cli import (
    ACTIVE,
    JOBS_DIR,
    cancel_and_wait,
    executor,
    job_states,
    scancel,
)
from hamsweep.rundir import atomic_write_text
from hamsweep.spec import SweepSpec, validate
from hamsweep.spec.cluster import SlurmProfile

__all__ = [
    "POLL_S",
    "JobsDriver",
    "TrialJob",
    "TrialJobs",
    "driver_profile",
    "listed_jobs",
    "proxy",
    "read_states",
    "settle",
    "trial_profile",
    "write_states",
]

# seconds between the driver's SLURM polls (one squeue + one sacct for every trial job)
POLL_S = 5.0
# CPUs a proxy reserves in the driver's Ray: it waits on files, the job does the work
PROXY_CPU = 0.01
_WATCH_S = 0.5  # a proxy looks for its job's next message this often (one stat in the sweep folder)
_CLOSE_WAIT_S = 10  # at the driver's end, how long its last trial jobs may take to leave the queue
# under slurm/: the trial job records, SLURM's states of them
TRIALS, STATES = ("trials", "trial_states.json")
RESULTS, COPIES, DONE, INTERRUPTED = "results", "copies", "done", "interrupted"  # in a job's folder
_INTERRUPTED = ("TIMEOUT", "PREEMPTED", "NODE_FAIL")  # job ends that are no fault of the trial's


def listed_jobs(out: Path, known: dict[str, int] | None = None) -> dict[str, int]:
    """Every trial job the sweep in ``out`` has submitted: job id -> trial number. Records already
    in ``known`` are not read again (a record never changes)."""
    folder, known = out / JOBS_DIR / TRIALS, known or {}
    found = {}
    for path in folder.glob("*.json") if folder.is_dir() else ():
        try:
            found[path.stem] = (
                known[path.stem] if path.stem in known else json.loads(path.read_text())["number"]
            )
        except (OSError, ValueError, KeyError):
            continue  # being written: the next look sees it
    return found


def read_states(out: Path) -> dict[str, str]:
    """The trial jobs' SLURM states as the driver last saw them (job id -> state)."""
    try:
        return json.loads((out / JOBS_DIR / STATES).read_text())
    except (OSError, ValueError):
        return {}


def write_states(out: Path, states: dict[str, str]) -> None:
    (out / JOBS_DIR).mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / JOBS_DIR / STATES, json.dumps(states))


def settle(out: Path) -> list[str]:
    """After the driver has gone (``hamsweep cancel``): cancel every trial job of ``out`` still
    queued or running, wait until SLURM has none of them left, and write their final states."""
    jobs = sorted(listed_jobs(out), key=int)
    cancel_and_wait(jobs)
    write_states(out, {job: state for job, (state, _) in job_states(jobs).items()})
    return jobs


def _job_folder(out: Path, number: int, job: str) -> Path:
    from hamsweep.sweep.driver import RAY_DIR
    from hamsweep.sweep.trial import work_dir

    return work_dir(out / RAY_DIR, number) / "jobs" / job


class TrialJobs:
    """The driver's side: the proxy trainable Tune runs, SLURM polled for all trial jobs at once,
    and the jobs of trials that end early cancelled. ``hamsweep.sweep.driver.drive`` and the
    Recorder call it."""

    def __init__(self, out: Path, profile: SlurmProfile) -> None:
        self.out, self.profile = Path(out), profile
        self.jobs: dict[str, int] = {}  # job id -> trial number, every trial job of the sweep
        # job id -> SLURM state at the last poll (of an earlier driver too)
        self.states = read_states(self.out)
        self._polled = -math.inf

    def trainable(
        self, spec: SweepSpec, experiment: Path
    ) -> tuple[Callable[..., None], dict[str, float]]:
        """What Tune runs per trial in mode jobs, and what it reserves in the driver's Ray."""
        from ray import tune

        fn = tune.with_parameters(
            proxy,
            spec_data=spec.model_dump(mode="json"),
            experiment=str(experiment),
            profile_data=self.profile.model_dump(mode="json"),
        )
        return fn, {"cpu": PROXY_CPU, "gpu": 0}

    def start(self) -> None:
        """Before Tune starts: cancel the trial jobs a killed driver left running (Tune restarts
        their trials from its checkpoints, in new jobs)."""
        self.poll(force=True)
        scancel([j for j, state in self.states.items() if state in ACTIVE])

    def poll(self, force: bool = False) -> None:
        """Every ``POLL_S`` at most: ask SLURM about every trial job not known to have ended, in
        one call, and write the states where the proxies read them."""
        if not force and time.monotonic() - self._polled < POLL_S:
            return
        self._polled = time.monotonic()
        self.jobs = listed_jobs(self.out, self.jobs)
        asked = [j for j in self.jobs if self.states.get(j) in (None, *ACTIVE)]
        for job, (state, _) in job_states(asked).items():
            self.states[job] = state
        write_states(self.out, self.states)

    def stop(self, number: int | None) -> None:
        """Trial ``number`` ended early (ASHA, an error) or restarts: cancel its jobs not known to
        have ended (one scancel; SLURM is not asked first)."""
        # a job submitted since the last poll is cancelled too
        self.jobs = listed_jobs(self.out, self.jobs)
        scancel(
            [
                j
                for j, n in self.jobs.items()
                if n == number and self.states.get(j, "PENDING") in ACTIVE
            ]
        )

    def close(self) -> None:
        """The driver is ending (finished, Ctrl-C, an error): cancel every trial job still running
        that has not finished its trial (a finished one is only exiting: it stays COMPLETED), then
        give them a few seconds to leave the queue, so that the states file ends true."""
        self.poll(force=True)
        running = [j for j in self.jobs if self.states.get(j, "PENDING") in ACTIVE]
        scancel(
            [j for j in running if not (_job_folder(self.out, self.jobs[j], j) / DONE).exists()]
        )
        deadline = time.monotonic() + _CLOSE_WAIT_S
        while (
            any(self.states.get(j, "PENDING") in ACTIVE for j in running)
            and time.monotonic() < deadline
        ):
            time.sleep(1)
            self.poll(force=True)


# ---- the proxy: Tune's trainable in the driver ----
def proxy(
    config: dict[str, Any], spec_data: dict[str, Any], experiment: str, profile_data: dict[str, Any]
) -> None:
    """One trial in mode jobs: restore Tune's checkpoint into the trial's work folder, submit the
    trial's job, then report its messages to Tune until it is done (see the module docstring). A job
    interrupted by its time limit or a preemption is followed by a new one from the last reported
    checkpoint, up to ``max_requeues`` times: not a failure of the trial."""
    from ray import tune

    from hamsweep.sweep.trial import restore_checkpoint, sweep_trial_config, work_dir

    out, number = Path(experiment).parent, config[NUMBER]
    work = work_dir(Path(experiment), number)
    restore_checkpoint(work, tune.get_checkpoint())
    spec, profile = validate(SweepSpec, spec_data), validate(SlurmProfile, profile_data)
    epochs, trial = sweep_trial_config(spec, config).train.epochs, tune.get_context().get_trial_id()
    relay: _Relay | None = None
    try:
        for _ in range(profile.max_requeues + 1):
            if relay is not None:
                relay.hand_over(work / "checkpoint")
            job = _submit(out, profile, spec, config, trial)
            relay = _Relay(out, job, _job_folder(out, number, job), epochs=epochs)
            relay.run()
            if not relay.interrupted:
                return
        raise JobFailed(
            f"trial {number}'s jobs were interrupted {profile.max_requeues + 1} times "
            f"(max_requeues: {profile.max_requeues})"
        )
    finally:
        # Tune stopped the trial early (ASHA), or this proxy failed
        if relay is not None and not relay.over and not relay.interrupted:
            scancel([relay.job])


def trial_profile(profile: SlurmProfile, spec: SweepSpec) -> SlurmProfile:
    """The profile of one trial's job: one node's worth of the spec's per-trial CPUs and whole
    GPUs, the trial's share of the node's memory (by GPUs or CPUs, whichever is larger), never
    requeued."""
    r = spec.resources
    cpus, gpus = max(1, math.ceil(r.cpu)), math.ceil(r.gpu)
    share = max(
        cpus / profile.cpus_per_task, gpus / profile.gpus_per_node if profile.gpus_per_node else 0.0
    )
    return profile.model_copy(
        update={
            "nodes": 1,
            "cpus_per_task": cpus,
            "gpus_per_node": gpus,
            "max_requeues": 0,
            "mem_gb": None if profile.mem_gb is None else math.ceil(profile.mem_gb * share),
            "sbatch_extra": {
                **profile.sbatch_extra,
                # a node failure ends the job: Tune restarts the trial
                "no_requeue": True,
            },
        }
    )


def _submit(
    out: Path, profile: SlurmProfile, spec: SweepSpec, config: dict[str, Any], trial: str
) -> str:
    number = config[NUMBER]
    ex = executor(trial_profile(profile, spec), out / JOBS_DIR, f"hamsweep-{out.name}-{number}")
    with _submission_env():
        job = str(ex.submit(TrialJob(str(out), spec.model_dump(mode="json"), dict(config))).job_id)
    (out / JOBS_DIR / TRIALS).mkdir(parents=True, exist_ok=True)
    atomic_write_text(
        out / JOBS_DIR / TRIALS / f"{job}.json",
        json.dumps({"number": number, "trial": trial, "submitted": time.time()}),
    )
    return job


@contextmanager
def _submission_env() -> Iterator[None]:
    """Submit without this process's SLURM job variables (a driver inside a job would hand them on
    and confuse the new job's srun) nor its GPUs: the trial job sees only what SLURM gives it."""
    names = [
        k
        for k in os.environ
        if k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SUBMITIT_")) and k != "SLURM_CONF"
    ]
    saved = {k: os.environ.pop(k) for k in [*names, "CUDA_VISIBLE_DEVICES"] if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


class _Relay:
    """Reports a job's messages to Tune in order until the job is done; raises if it ends before,
    unless a time limit or a preemption ended it (``interrupted``)."""

    def __init__(self, out: Path, job: str, folder: Path, *, epochs: int) -> None:
        self.out, self.job, self.folder, self.epochs = out, job, folder, epochs
        self.seq = 1
        # the job has nothing left to train: done, its last epoch reported, or diverged
        self.over = False
        self.interrupted = False  # the job ended early through no fault of the trial's
        self.last_copy: Path | None = None  # the checkpoint Tune got last: where a next job starts

    def run(self) -> None:
        while not (self.folder / DONE).exists() or self._next().is_file():
            if self._next().is_file():
                self._report(json.loads(self._next().read_text()))
            elif self._ended():
                return
            else:
                time.sleep(_WATCH_S)
        self.over = True

    def hand_over(self, start: Path) -> None:
        """Make the last checkpoint Tune got the start of the trial's next job (none yet:
        ``start`` stays)."""
        if self.last_copy is not None:
            shutil.rmtree(start, ignore_errors=True)
            os.replace(self.last_copy, start)

    def _next(self) -> Path:
        return self.folder / RESULTS / f"{self.seq:06d}.json"

    def _report(self, message: dict[str, Any]) -> None:
        from hamsweep.sweep.trial import tune_report

        result = message["result"]
        copy = self.folder / message["checkpoint"] if message["checkpoint"] else None
        # when Tune ends the trial at this result (its last epoch), report() does not return
        self.over = result.get("epoch", 0) >= self.epochs or "failed" in result
        tune_report(result, copy)
        if copy is not None:  # Ray holds its own copy now: keep only the newest one, for a next job
            if self.last_copy is not None:
                shutil.rmtree(self.last_copy, ignore_errors=True)
            self.last_copy = copy
        self.seq += 1

    def _ended(self) -> bool:
        """Whether the job has ended without finishing: interrupted (True), or failed (raise)."""
        # a job writes its last message, then done, then ends: read in the other order
        state = read_states(self.out).get(self.job)
        if (
            state is None
            or state in ACTIVE
            or (self.folder / DONE).exists()
            or self._next().is_file()
        ):
            return False
        self.interrupted = state in _INTERRUPTED or (self.folder / INTERRUPTED).exists()
        if not self.interrupted:
            log = self.out / JOBS_DIR / f"{self.job}_0_log.err"
            raise JobFailed(
                f"SLURM job {self.job} ended {state} before its trial finished (its log: {log})"
            )
        return True


# ---- the trial's job ----
class TrialJob:
    """What a trial's SLURM job runs: ``train_trial`` in the job's own folder, from the checkpoint
    its proxy restored, each result a message file (``_Messages``)."""

    def __init__(self, out: str, spec_data: dict[str, Any], config: dict[str, Any]) -> None:
        self.out, self.spec_data, self.config = out, spec_data, config

    def __call__(self) -> None:
        from hamsweep.sweep.trial import train_trial

        job = str(submitit.JobEnvironment().job_id)
        folder = _job_folder(Path(self.out), self.config[NUMBER], job)
        # a rerun would repeat messages the proxy has taken: end, Tune restarts the trial
        if folder.exists():
            raise JobFailed(
                f"trial job {job} was requeued; "
                "trial jobs run once (Tune restarts the trial in a new job)"
            )
        start = folder.parent.parent / "checkpoint"
        folder.mkdir(parents=True)
        if start.is_dir():
            _link_tree(start, folder / "checkpoint")
        spec = validate(SweepSpec, self.spec_data)
        messages = _Messages(folder)
        train_trial(
            spec, self.config, folder, out=Path(self.out), cpus=spec.resources.cpu, emit=messages
        )
        atomic_write_text(folder / DONE, "")

    def checkpoint(self, *args: Any, **kwargs: Any) -> None:
        """submitit calls this on USR2 (before the time limit, or a preemption): mark the folder
        interrupted and return None, i.e. do not requeue: the job ends and its proxy submits a
        new one from the last checkpoint it reported."""
        job = str(submitit.JobEnvironment().job_id)
        atomic_write_text(_job_folder(Path(self.out), self.config[NUMBER], job) / INTERRUPTED, "")
        return None


class _Messages:
    """The job's ``Emit``: each result a numbered message, its checkpoint a stable
    copy beside it."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.seq = folder, 0
        (folder / RESULTS).mkdir(parents=True, exist_ok=True)

    def __call__(self, result: dict[str, Any], checkpoint_dir: Path | None) -> None:
        self.seq += 1
        copy = None
        if checkpoint_dir is not None:
            copy = f"{COPIES}/{self.seq:06d}"
            _link_tree(checkpoint_dir, self.folder / copy)
        atomic_write_text(
            self.folder / RESULTS / f"{self.seq:06d}.json",
            json.dumps({"result": result, "checkpoint": copy}),
        )


def _link_tree(src: Path, dst: Path) -> None:
    """A copy of ``src`` made of hard links: train.py and the reporter replace files (new inodes)
    rather than write into them, so the links keep this epoch's bytes, at no copying cost."""

    def link(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:  # a file system without hard links
            shutil.copy2(a, b)

    shutil.copytree(src, dst, copy_function=link)


# ---- the detached driver ----
class JobsDriver(submitit.helpers.Checkpointable):
    """The driver of a detached mode-jobs sweep, in a small CPU job. Checkpointable: on a time limit
    or a preemption submitit requeues it, and the rerun resumes the sweep from its folder."""

    def __init__(self, out: str, profile_data: dict[str, Any]) -> None:
        self.out, self.profile_data = out, profile_data

    def __call__(self) -> str:
        from hamsweep.sweep.driver import drive

        drive(
            Path(self.out),
            jobs=TrialJobs(Path(self.out), validate(SlurmProfile, self.profile_data)),
        )
        return self.out

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        # the trials cannot report while the driver waits in the queue: stop their jobs now rather
        # than at the rerun's start (each restarts from its last checkpoint)
        TrialJobs(Path(self.out), validate(SlurmProfile, self.profile_data)).close()
        return super().checkpoint(*args, **kwargs)


def driver_profile(profile: SlurmProfile) -> SlurmProfile:
    """The profile of the detached driver's job: one node, ``driver_cpus`` CPUs and
    ``driver_mem_gb``, no GPU."""
    return profile.model_copy(
        update={
            "nodes": 1,
            "cpus_per_task": profile.driver_cpus,
            "gpus_per_node": 0,
            "mem_gb": profile.driver_mem_gb,
        }
    )
