"""Orchestration seconds per trial: ``hamsweep run`` vs a plain Optuna loop on
the same nearly free trials.

    .venv/bin/python bench/overhead.py [--trials 20] [--max-concurrent 1] [--keep DIR]

Writes a tiny spec (synthetic data: 4 classes of 8x8 images, 96 training / 32 validation images;
small_cnn of width 4; one HAM epoch of batch 64 with PGD-2, PGD-2 validation; no ASHA, no test
split, no final evaluation; 1 CPU per trial) searching ham.discard_threshold and
ham.keep_easy_fraction over ``--trials`` trials, then times:

- A: ``hamsweep run SPEC --out DIR`` in a subprocess, wall time around it. The sweep's own timing is
  read back: each trial's ``wall_seconds`` (the Recorder's clock, from Tune's trial start to its end
  in the driver) from the ``trials`` table, and each trial's start from Tune's experiment state
  (Ray 2.60's JSON), because the table's timestamps are whole seconds.
- Ray's start alone: the driver's own ``_start_ray`` / ``_stop_ray`` in a subprocess.
- B: a plain Optuna loop in this process: the sweep's sampler, the defaults as the first trial,
  ``spec.trial_config(params)`` -> ``hamsweep.core.train.run(...)`` called directly on a dataset
  loaded once (as a reused Ray actor does), torch on 1 thread as in a 1-CPU
  trial, in-memory storage.

Orchestration per trial amortized = (sweep span - plain total / concurrency) / N, where the span
runs from the first trial's start to the last trial's end: Ray's start and the driver's set-up are
reported separately, the first actor's start is inside the span. Goal: <= 0.3 s (actors reused).
The sweep's console goes to a file, so the driver prints event lines; in a terminal it also redraws
its live frame twice per one-epoch trial, which is not measured here. The two sides run one after
the other: on a shared machine, compare the load averages printed at the end, and rerun.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repo root, so the bench runs from a checkout without installing

from hamsweep.core.data import load  # noqa: E402
from hamsweep.core.train import run  # noqa: E402
from hamsweep.results import store as results  # noqa: E402
from hamsweep.spec import SweepSpec, load_spec  # noqa: E402

HAMSWEEP = Path(sys.executable).with_name("hamsweep")  # the venv's console script
GOAL_S = 0.3  # orchestration seconds per trial, amortized

SPEC = """\
name: overhead
data: {{name: synthetic, num_classes: 4, image_size: 8, train_size: 128, \
test_size: 32, val_fraction: 0.25}}
model: {{name: small_cnn, width: 4}}
train: {{method: ham, epochs: 1, batch_size: 64, attack_steps: 2}}
ham: {{warmup_epochs: 0, drop_step: 1}}
eval: {{attack_steps: 2, test: false}}   # a sweep never touches the test split during the search
scheduler: none
confirm: {{top_k: 0}}
resources: {{cpu: 1}}
search:
  num_samples: {trials}
  max_concurrent: {concurrent}
  params:
    ham.discard_threshold: {{uniform: [0.0, 0.9], default: 0.0}}
    ham.keep_easy_fraction: {{uniform: [0.0, 0.5], default: 0.0}}
"""

# Ray's start and stop exactly as the driver does them. torch is imported before the clock starts
# (the driver has it loaded for its data check); ray is not: _start_ray sets Ray's environment
# first, and the driver pays for the import there too
RAY_START = """\
import sys, time
from pathlib import Path
import torch
from hamsweep.sweep.driver import _ray_temp_dir, _start_ray, _stop_ray, _token
out = Path(sys.argv[1])
token, temp = _token(out), _ray_temp_dir(out)
t0 = time.perf_counter(); _start_ray(None, token, temp)
t1 = time.perf_counter(); _stop_ray(None, temp)
print(t1 - t0, time.perf_counter() - t1)
"""


def sweep(spec_path: Path, out: Path) -> tuple[float, float]:
    """Run ``hamsweep run`` to the end; (launch, exit) as time.time(). Its
    console goes to a log file."""
    log = out.parent / "sweep.log"
    launch = time.time()
    with log.open("w") as f:
        proc = subprocess.run(
            [str(HAMSWEEP), "run", str(spec_path), "--out", str(out)],
            stdout=f,
            stderr=subprocess.STDOUT,
        )
    done = time.time()
    if proc.returncode:
        sys.exit(
            f"hamsweep run exited with {proc.returncode}; its last lines:\n"
            + "\n".join(log.read_text().splitlines()[-20:])
        )
    return launch, done


def tune_starts(out: Path) -> dict[str, float]:
    """Trial id -> time.time() Tune started it (on a reused actor: the reset), from the latest
    experiment state. Each ``trial_data`` entry is [trial JSON, run-metadata JSON] in Ray 2.60."""
    state = json.loads(max((out / "ray").glob("experiment_state-*.json")).read_text())
    return {json.loads(t)["trial_id"]: json.loads(m)["start_time"] for t, m in state["trial_data"]}


def sweep_trials(out: Path) -> list[tuple[float, float]]:
    """(start, wall seconds) of each trial, by start. The end is start + wall: the Recorder's clock
    starts at Tune's on_trial_start, within milliseconds of Tune's start_time."""
    starts = tune_starts(out)
    rows = results.read_table(out, results.TRIALS).to_pylist()
    return sorted((starts[r["trial"]], r["wall_seconds"]) for r in rows)


def ray_start(tmp: Path) -> tuple[float, float]:
    """(import ray + ray.init, ray.shutdown) seconds with the sweep's
    settings, in a fresh process."""
    folder = tmp / "ray_alone"
    folder.mkdir()
    proc = subprocess.run(
        [sys.executable, "-c", RAY_START, str(folder)], capture_output=True, text=True, cwd=ROOT
    )
    if proc.returncode:
        sys.exit(f"starting Ray alone failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    init, stop = map(float, proc.stdout.split()[-2:])
    return init, stop


def plain(spec: SweepSpec, tmp: Path, n: int) -> tuple[list[float], float]:
    """Seconds of each objective call of a plain Optuna loop over the same trials, and of the whole
    loop (study, sampler, trials); imports and the dataset's one load are not counted."""
    import optuna

    from hamsweep.sweep.search import make_sampler

    torch.set_num_threads(1)  # as a 1-CPU trial under Ray
    dataset = load(spec.trial_config().data)  # once, as a reused actor caches it
    seconds: list[float] = []

    def objective(trial: optuna.Trial) -> float:
        tic = time.perf_counter()
        params = {
            k: trial.suggest_float(k, d.low, d.high, log=d.kind == "loguniform")
            for k, d in spec.search.params.items()
        }
        cfg = spec.trial_config(params)
        # a fresh folder: train.run resumes from an old one
        workdir = tmp / f"plain_{trial.number:05d}"
        records = run(cfg, workdir=workdir, dataset=dataset)
        seconds.append(time.perf_counter() - tic)
        return records[-1].val_robust().summary(cfg.eval.cvar_fraction)["worst"]

    tic = time.perf_counter()
    study = optuna.create_study(direction="maximize", sampler=make_sampler(spec))
    study.enqueue_trial(spec.defaults())  # the sweep's first trial runs the defaults too
    study.optimize(objective, n_trials=n)
    return seconds, time.perf_counter() - tic


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=20, help="trials on each side (default 20)")
    p.add_argument(
        "--max-concurrent",
        type=int,
        default=1,
        help="the sweep's search.max_concurrent (default 1)",
    )
    p.add_argument(
        "--keep", type=Path, help="keep the sweep folder and its log here (a new folder)"
    )
    args = p.parse_args()
    if args.trials < 1 or args.max_concurrent < 1:
        p.error(
            f"--trials and --max-concurrent must be >= 1 but got {args.trials} and "
            f"{args.max_concurrent}"
        )
    if args.keep and args.keep.exists():
        p.error(f"--keep {args.keep} already exists; name a new folder")
    with tempfile.TemporaryDirectory(prefix="hamsweep-overhead-") as scratch:
        tmp = Path(args.keep or scratch).resolve()
        tmp.mkdir(parents=True, exist_ok=args.keep is None)
        spec_path = tmp / "overhead.yaml"
        spec_path.write_text(SPEC.format(trials=args.trials, concurrent=args.max_concurrent))
        # the two sides run one after the other: say how busy the machine was
        load_before = os.getloadavg()[0]
        launch, done = sweep(spec_path, tmp / "sweep")
        trials = sweep_trials(tmp / "sweep")
        init, stop = ray_start(tmp)
        plain_s, plain_total = plain(load_spec(spec_path), tmp, args.trials)
    report(args, launch, done, trials, (init, stop), plain_s, plain_total)
    print(
        f"load average (1 min) before / after: {load_before:.2f} / {os.getloadavg()[0]:.2f} on "
        f"{os.cpu_count()} CPUs"
    )


def report(
    args: argparse.Namespace,
    launch: float,
    done: float,
    trials: list[tuple[float, float]],
    ray: tuple[float, float],
    plain_s: list[float],
    plain_total: float,
) -> None:
    n, c = len(trials), args.max_concurrent
    ends = [s + w for s, w in trials]
    first, last = trials[0][0], max(ends)
    span, in_trial = last - first, sum(w for _, w in trials)
    warm = trials[c:] or trials  # the first c trials each start a new actor; later ones reuse one
    wall_warm = statistics.median(w for _, w in warm)
    plain_rest = statistics.median(plain_s[1:] or plain_s)
    # per trial, once the actors are up
    steady = (last - warm[0][0]) / len(warm) if n > c else span / n
    amortized = (span - plain_total / c) / n
    print(f"{n} trials, max_concurrent {c}, 1 CPU per trial, torch {torch.__version__}")
    print("hamsweep run (subprocess)")
    print(f"  total wall, launch -> exit                  {done - launch:7.2f} s")
    print(
        "  Ray alone: import+init / shutdown           "
        f"{ray[0]:7.2f} s / {ray[1]:.2f} s (measured apart)"
    )
    print(f"  start-up: launch -> first trial started     {first - launch:7.2f} s")
    print(f"  first trial (actor start + data + compute)  {trials[0][1]:7.2f} s")
    print(
        f"  sweep span: first start -> last end         {span:7.2f} s  = {span / n:.3f} s per trial"
    )
    print(f"  steady state, from trial c+1's start        {steady:7.3f} s per trial")
    print(f"  finish: last trial end -> exit              {done - last:7.2f} s")
    print(f"  trial wall (Recorder), median on reuse      {wall_warm:7.3f} s")
    if c == 1 and n > 1:
        gaps = [b[0] - a for a, b in zip(ends, trials[1:])]  # a trial's end -> the next one's start
        print(
            f"  gap end -> next start: median / max         {statistics.median(gaps):7.3f} s / "
            f"{max(gaps):.3f} s"
        )
    print("plain Optuna loop (in-process, dataset loaded once, torch 1 thread)")
    print(
        f"  total                                       {plain_total:7.2f} s  = "
        f"{plain_total / n:.3f} s per trial"
    )
    print(f"  first trial / median of the others          {plain_s[0]:7.3f} s / {plain_rest:.3f} s")
    print("orchestration, seconds per trial")
    print(f"  no trial running: (span - in-trial / c) / N {(span - in_trial / c) / n:7.3f}")
    print(f"  inside a trial: trial wall - plain, medians {wall_warm - plain_rest:7.3f}")
    print(f"  steady state - plain median / c             {steady - plain_rest / c:7.3f}")
    print(
        "  first trial - plain first (actor start)     "
        f"{trials[0][1] - plain_s[0]:7.3f}  once per actor"
    )
    print(
        f"  amortized: (span - plain total / c) / N     {amortized:7.3f}   goal <= {GOAL_S}: "
        f"{'met' if amortized <= GOAL_S else 'NOT met'}"
    )
    print(
        "  with start-up: (wall - plain total / c) / N "
        f"{(done - launch - plain_total / c) / n:7.3f}"
    )


if __name__ == "__main__":
    main()
