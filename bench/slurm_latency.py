"""Launch latency and per-trial overhead on SLURM (mode ray and mode jobs) against
the same sweep run locally.

    cluster/local/slurm.sh run .venv/bin/python bench/slurm_latency.py [--trials 8]
                                                                       [--partition debug]

Runs on the project's local SLURM (cluster/local/slurm.sh; SLURM_CONF must name it). One tiny spec
(synthetic 8x8 images, small_cnn of width 4, one HAM epoch per trial, no ASHA, no final evaluation,
1 CPU per trial, one trial at a time) is swept three times, one after the other:

- local:       ``hamsweep run SPEC`` (a local Ray started by the driver);
- slurm ray:   ``hamsweep run SPEC --cluster PROFILE`` attached, mode ray (sbatch, the job starts
               a Ray head under ``ray start --block``, the driver on rank 0 connects to it);
- slurm jobs:  the same, mode jobs (the driver runs here on a local Ray; each trial is its own
               SLURM job, submitted by a light proxy trial, its epochs relayed through files).

For each it prints the time from the command's start to the first trial's first epoch row on disk
(the Parquet part the driver writes; it flushes at least every 5 s), the total wall time, the span
from the first trial's start to the last trial's end over N, the part of that span outside the
trials' own wall time (the Recorder's clock) over N, and the seconds per trial beyond local's: the
per-trial overhead of the launcher (in mode jobs it lies inside each trial's own clock, which runs
from submitting its job: queueing, the job's start, its imports and data). Ratios to local are
measured in this one run.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hamsweep.results import store as results  # noqa: E402

HAMSWEEP = Path(sys.executable).with_name("hamsweep")

SPEC = """\
name: latency
data: {{name: synthetic, num_classes: 4, image_size: 8, train_size: 128, \
test_size: 32, val_fraction: 0.25}}
model: {{name: small_cnn, width: 4}}
train: {{method: ham, epochs: 1, batch_size: 64, attack_steps: 2}}
ham: {{warmup_epochs: 0, drop_step: 1}}
eval: {{attack_steps: 2, test: false}}
scheduler: none
confirm: {{top_k: 0}}
resources: {{cpu: 1}}
search:
  num_samples: {trials}
  max_concurrent: 1
  params:
    ham.discard_threshold: {{uniform: [0.0, 0.9], default: 0.0}}
"""

PROFILE = """\
kind: slurm
mode: {mode}
partition: {partition}
nodes: 1
cpus_per_task: 2
timeout_min: 30
shared_folder: {shared}
"""


def first_epoch_on_disk(out: Path) -> bool:
    return (
        any((out / results.EPOCHS).glob("*.parquet")) if (out / results.EPOCHS).is_dir() else False
    )


def timed_sweep(cmd: list[str], out: Path, log: Path) -> dict[str, float]:
    """Run ``cmd``; note when the first epoch row appears; return the timings
    of the finished sweep."""
    t0 = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
        first = None
        while proc.poll() is None:
            if first is None and first_epoch_on_disk(out):
                first = time.perf_counter() - t0
            time.sleep(0.05)
    total = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}); its output: {log}")
    rows = results.read_table(out, results.TRIALS).to_pylist()
    starts = [r["started"].timestamp() for r in rows]
    ends = [r["ended"].timestamp() for r in rows]
    train = sum(r["wall_seconds"] for r in rows)
    span = max(ends) - min(starts)
    n = len(rows)
    return {
        "first_epoch_s": first or total,
        "total_s": total,
        "per_trial_s": span / n,
        "overhead_s": (span - train) / n,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--partition", default="debug")
    args = p.parse_args()
    if not os.environ.get("SLURM_CONF"):
        sys.exit(
            "SLURM_CONF is not set: run this under "
            "cluster/local/slurm.sh run (or against your own SLURM)"
        )
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        spec = root / "latency.yaml"
        spec.write_text(SPEC.format(trials=args.trials))
        runs = {
            "local": timed_sweep(
                [str(HAMSWEEP), "run", str(spec), "--out", str(root / "local")],
                root / "local",
                root / "local.log",
            )
        }
        for mode in ("ray", "jobs"):
            prof = root / f"{mode}.yaml"
            prof.write_text(
                PROFILE.format(mode=mode, partition=args.partition, shared=root / "shared")
            )
            out = root / f"slurm-{mode}"
            runs[f"slurm ({mode})"] = timed_sweep(
                [str(HAMSWEEP), "run", str(spec), "--cluster", str(prof), "--out", str(out)],
                out,
                root / f"{mode}.log",
            )
    local = runs["local"]
    for timings in runs.values():
        timings["extra_s"] = timings["per_trial_s"] - local["per_trial_s"]
    print(
        f"{args.trials} one-epoch trials, one at a time, 1 CPU each; local SLURM partition "
        f"{args.partition}"
    )
    print(
        f"{'':32}"
        + "".join(f"{name:>13}" for name in runs)
        + f"{'ray/local':>11}{'jobs/local':>11}"
    )
    for key, label in (
        ("first_epoch_s", "launch -> first epoch, s"),
        ("total_s", "whole sweep, s"),
        ("per_trial_s", "seconds per trial (span/N)"),
        ("overhead_s", "  of which between trials, s"),
        ("extra_s", "  beyond local's, s"),
    ):
        ratios = "".join(
            f"{runs[name][key] / local[key]:11.2f}" if local[key] > 0.05 else f"{'-':>11}"
            for name in ("slurm (ray)", "slurm (jobs)")
        )
        print(f"{label:32}" + "".join(f"{t[key]:13.2f}" for t in runs.values()) + ratios)


if __name__ == "__main__":
    main()
