"""What grows with a sweep: 1,000 nearly free trials through ``hamsweep run`` (issue 13, part 7).

    .venv/bin/python bench/scale.py [--trials 1000] [--concurrent 8] [--keep DIR]

Writes a tiny spec (synthetic data: 4 classes of 8x8 images, 64 training / 16 validation images;
small_cnn of width 4; one HAM epoch of batch 64 with PGD-1; PGD-1 validation; no ASHA, no confirm
stage; ``1 / --concurrent`` of a CPU per trial, so that ``--concurrent`` trials run at once on 2
cores) searching three HAM knobs with TPE, runs ``hamsweep run SPEC --out DIR`` in a subprocess and,
while it runs, every 0.5 s: the driver's resident memory (VmRSS, and VmHWM, its peak), and each
table's Parquet parts (files, parts newer than the base, the bases seen: one per fold). Once 90% of
the trials have ended, the three tables are copied aside; after the run the copy is compacted into
one part per table, timed. Then it reports:

- the driver's seconds per trial, first 100 trials against the last 100: the span from the start
  of trial i to the end of trial i + 99, over 100 (start times from Tune's experiment state, ends =
  start + the Recorder's wall seconds); the first window starts after the first ``--concurrent``
  trials, whose actors start once. Goal: last <= 2x first;
- Optuna's suggest time as the study grows: the sweep's sampler (``search.make_sampler``) over its
  journal storage (``study.journal_storage``) in this process, ``--trials`` ask + suggest + tell,
  median of the first and of the last 100;
- the driver's memory at 10% of the trials and at the end, and its peak;
- the parts: the most files a table had at once, the most parts newer than its base, the folds;
  and the compaction time of the 90% copy;
- the dashboard's frame with every trial in it (``state.json`` at the end): render time (best of 5)
  and its height in lines, which must not grow with the trial count (at most 20 trial rows).

All figures come from one run on this machine; the sweep's console goes to a log file.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repo root, so the bench runs from a checkout without installing

from hamsweep.results import store as results  # noqa: E402

HAMSWEEP = Path(sys.executable).with_name("hamsweep")  # the venv's console script
GOAL_RATIO = 2.0  # per-trial seconds of the last 100 trials over the first 100
TABLES = (results.TRIALS, results.EPOCHS, results.CLASSES)
WINDOW = 100  # trials in the first and the last window

SPEC = """\
name: scale
data: {{name: synthetic, num_classes: 4, image_size: 8, train_size: 80, \
test_size: 16, val_fraction: 0.2}}
model: {{name: small_cnn, width: 4}}
train: {{method: ham, epochs: 1, batch_size: 64, attack_steps: 1}}
ham: {{warmup_epochs: 0, drop_step: 1}}
eval: {{attack_steps: 1}}
scheduler: none
confirm: {{top_k: 0}}
resources: {{cpu: {cpu}}}
search:
  num_samples: {trials}
  max_concurrent: {concurrent}
  params:
    ham.discard_threshold: {{uniform: [0.0, 0.9], default: 0.0}}
    ham.keep_easy_fraction: {{uniform: [0.0, 0.5], default: 0.0}}
    ham.temperature: {{uniform: [0.5, 2.0], default: 1.0}}
"""


class Watch:
    """Samples the running driver and its folder every 0.5 s in a thread (see
    the module docstring)."""

    def __init__(self, pid: int, out: Path, trials: int, copy_to: Path) -> None:
        self.pid, self.out, self.trials, self.copy_to = pid, out, trials, copy_to
        self.rss: list[tuple[int, int]] = []  # (trials ended, kB)
        self.hwm = 0
        self.files = {t: 0 for t in TABLES}
        self.recent = {t: 0 for t in TABLES}
        self.bases: dict[str, set[str]] = {t: set() for t in TABLES}
        self.copied_at: int | None = None
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self.done.wait(0.5):
            try:
                self._sample()
            # a file renamed under us, a state being replaced, the driver exiting
            except (OSError, ValueError, KeyError):
                continue

    def _sample(self) -> None:
        status = Path(f"/proc/{self.pid}/status").read_text()
        kb = {
            line.split(":")[0]: int(line.split()[1])
            for line in status.splitlines()
            if line.startswith(("VmRSS", "VmHWM"))
        }
        ended = self._ended()
        self.rss.append((ended, kb["VmRSS"]))
        self.hwm = max(self.hwm, kb["VmHWM"])
        for table in TABLES:
            found = results.parts(self.out, table)
            self.files[table] = max(self.files[table], len(found.live) + len(found.covered))
            self.recent[table] = max(self.recent[table], len(found.recent))
            if found.base is not None:
                self.bases[table].add(found.base.name)
        if self.copied_at is None and ended >= 0.9 * self.trials:
            for table in TABLES:
                shutil.copytree(self.out / table, self.copy_to / table)
            self.copied_at = ended

    def _ended(self) -> int:
        try:
            state = json.loads((self.out / "state.json").read_text())
        except (OSError, ValueError):
            return 0
        return sum(
            v["status"] in ("completed", "stopped", "failed") for v in state["trials"].values()
        )


def run_sweep(spec: Path, out: Path, trials: int, copy_to: Path) -> tuple[Watch, float]:
    log = out.parent / "sweep.log"
    start = time.time()
    with log.open("w") as f:
        proc = subprocess.Popen(
            [str(HAMSWEEP), "run", str(spec), "--out", str(out)], stdout=f, stderr=subprocess.STDOUT
        )
        watch = Watch(proc.pid, out, trials, copy_to)
        watch.thread.start()
        proc.wait()
    watch.done.set()
    watch.thread.join()
    if proc.returncode:
        sys.exit(
            f"hamsweep run exited with {proc.returncode}; its last lines:\n"
            + "\n".join(log.read_text().splitlines()[-20:])
        )
    return watch, time.time() - start


def per_trial(out: Path, concurrent: int) -> tuple[float, float, int]:
    """(seconds per trial over the first WINDOW trials once the ``concurrent`` actors have started
    (their start is paid once, not per trial), over the last WINDOW, trials)."""
    state = json.loads(max((out / "ray").glob("experiment_state-*.json")).read_text())
    starts = {
        json.loads(t)["trial_id"]: json.loads(m)["start_time"] for t, m in state["trial_data"]
    }
    rows = sorted(
        (starts[r["trial"]], starts[r["trial"]] + r["wall_seconds"])
        for r in results.read_table(out, results.TRIALS).to_pylist()
    )
    n = min(WINDOW, len(rows) // 2)

    def span(window: list[tuple[float, float]]) -> float:
        return (max(e for _, e in window) - window[0][0]) / len(window)

    return span(rows[concurrent : concurrent + n]), span(rows[-n:]), len(rows)


def suggest_times(spec_path: Path, tmp: Path, n: int) -> tuple[float, float]:
    """Median ms of ask + suggest + tell over the first and the last WINDOW of ``n`` trials."""
    import random

    import optuna

    from hamsweep.results.study import journal_storage
    from hamsweep.spec import load_spec
    from hamsweep.sweep.search import make_sampler

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = load_spec(spec_path)
    study = optuna.create_study(
        direction="maximize",
        sampler=make_sampler(spec),
        storage=journal_storage(tmp / "suggest.journal"),
    )
    rng, ms = random.Random(0), []
    for _ in range(n):
        tic = time.perf_counter()
        trial = study.ask()
        for key, d in spec.search.params.items():
            trial.suggest_float(key, d.low, d.high)
        study.tell(trial, rng.random())
        ms.append(1000 * (time.perf_counter() - tic))
    w = min(WINDOW, n // 2)
    return statistics.median(ms[:w]), statistics.median(ms[-w:])


def compaction(copy: Path) -> tuple[float, list[int]]:
    before = [len(list((copy / t).glob(results.PART_GLOB))) for t in TABLES]
    tic = time.perf_counter()
    results.compact(copy)
    return time.perf_counter() - tic, before


def frame(out: Path) -> tuple[float, int, int]:
    """(best ms of 5 renders, lines of the frame, trials in the state)."""
    from rich.console import Console

    from hamsweep.sweep.dashboard import render, state_from_json

    state = state_from_json((out / "state.json").read_text())
    best, lines = float("inf"), 0
    for _ in range(5):
        console = Console(file=io.StringIO(), width=160, record=True)
        tic = time.perf_counter()
        console.print(render(state))
        best = min(best, time.perf_counter() - tic)
        lines = console.export_text().count("\n")
    return 1000 * best, lines, len(state.trials)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=1000, help="trials (default 1000)")
    p.add_argument("--concurrent", type=int, default=8, help="trials at once (default 8)")
    p.add_argument(
        "--keep", type=Path, help="keep the sweep folder and its log here (a new folder)"
    )
    args = p.parse_args()
    if args.trials < 20 or args.concurrent < 1:
        p.error(
            f"--trials must be >= 20 and --concurrent >= 1 but got {args.trials} and "
            f"{args.concurrent}"
        )
    if args.keep and args.keep.exists():
        p.error(f"--keep {args.keep} already exists; name a new folder")
    with tempfile.TemporaryDirectory(prefix="hamsweep-scale-") as scratch:
        tmp = Path(args.keep or scratch).resolve()
        tmp.mkdir(parents=True, exist_ok=args.keep is None)
        spec = tmp / "scale.yaml"
        spec.write_text(
            SPEC.format(
                trials=args.trials, concurrent=args.concurrent, cpu=f"{2 / args.concurrent:g}"
            )
        )
        (tmp / "copy").mkdir()
        watch, wall = run_sweep(spec, tmp / "sweep", args.trials, tmp / "copy")
        first, last, n = per_trial(tmp / "sweep", args.concurrent)
        suggest_first, suggest_last = suggest_times(spec, tmp, args.trials)
        compact_s, parts_before = (
            compaction(tmp / "copy") if watch.copied_at is not None else (float("nan"), [0, 0, 0])
        )
        frame_ms, frame_lines, frame_trials = frame(tmp / "sweep")
    early = next(
        (kb for ended, kb in watch.rss if ended >= args.trials // 10),
        watch.rss[0][1] if watch.rss else 0,
    )
    end = watch.rss[-1][1] if watch.rss else 0
    print(
        f"{n} trials, {args.concurrent} at once, {2 / args.concurrent:g} CPU each on "
        f"{os.cpu_count()} CPUs; hamsweep run: {wall:.0f} s wall, {wall / n:.2f} s per trial"
    )
    print(
        f"driver seconds per trial, first {min(WINDOW, n // 2)} (after the first "
        f"{args.concurrent}) / last {min(WINDOW, n // 2)}: {first:.3f} / {last:.3f} s = "
        f"{last / first:.2f}x (goal <= {GOAL_RATIO:g}x: "
        f"{'met' if last / first <= GOAL_RATIO else 'NOT met'})"
    )
    print(
        "Optuna TPE ask + suggest + tell, median of the first / last "
        f"{min(WINDOW, args.trials // 2)}: {suggest_first:.1f} / {suggest_last:.1f} ms = "
        f"{suggest_last / suggest_first:.1f}x"
    )
    print(
        f"driver memory (VmRSS) at {args.trials // 10} trials / at the end: {early / 1024:.0f} / "
        f"{end / 1024:.0f} MB; peak (VmHWM) {watch.hwm / 1024:.0f} MB"
    )
    for table in TABLES:
        print(
            f"  {table:<8} most part files at once {watch.files[table]:>3}, most newer than the "
            f"base {watch.recent[table]:>3}, folds {len(watch.bases[table])}"
        )
    print(
        f"compaction of the copy taken at {watch.copied_at} trials ended "
        f"({', '.join(f'{t} {b}' for t, b in zip(TABLES, parts_before))} part files): "
        f"{compact_s:.2f} s"
    )
    print(
        f"dashboard frame with {frame_trials} trials: "
        f"{frame_ms:.1f} ms to render, {frame_lines} lines"
    )


if __name__ == "__main__":
    main()
