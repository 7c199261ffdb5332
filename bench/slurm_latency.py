"""Launch latency and per-trial overhead on SLURM (mode: ray) against the same sweep run locally.

    cluster/local/slurm.sh run .venv/bin/python bench/slurm_latency.py [--trials 8] [--partition debug]

Runs on the project's local SLURM (cluster/local/slurm.sh; SLURM_CONF must name it). One tiny spec
(synthetic 8x8 images, small_cnn of width 4, one HAM epoch per trial, no ASHA, no final evaluation,
1 CPU per trial, one trial at a time) is swept twice, one after the other:

- local:  ``hamsweep run SPEC`` (a local Ray started by the driver);
- slurm:  ``hamsweep run SPEC --cluster PROFILE`` attached (mode ray: sbatch, the job starts a Ray
  head under ``ray start --block``, the driver on rank 0 connects to it).

For each it prints the time from the command's start to the first trial's first epoch row on disk
(the Parquet part the driver writes), the total wall time, the span from the first trial's start
to the last trial's end over N, and the part of it outside the trials' own wall time (the Recorder's
clock) over N: the per-trial scheduling overhead. Ratios slurm / local are measured in this one run. Mode jobs (one SLURM job per trial) is not
available yet, so it is not measured.
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

from hamsweep import results  # noqa: E402

HAMSWEEP = Path(sys.executable).with_name("hamsweep")

SPEC = """\
name: latency
data: {{name: synthetic, num_classes: 4, image_size: 8, train_size: 128, test_size: 32, val_fraction: 0.25}}
model: {{name: small_cnn, width: 4}}
train: {{method: ham, epochs: 1, batch_size: 64, attack_steps: 2}}
ham: {{warmup_epochs: 0, drop_step: 1}}
eval: {{attack_steps: 2, test: false}}
scheduler: none
final_eval: {{top_k: 0}}
resources: {{cpu: 1}}
search:
  num_samples: {trials}
  max_concurrent: 1
  params:
    ham.discard_threshold: {{uniform: [0.0, 0.9], default: 0.0}}
"""

PROFILE = """\
kind: slurm
mode: ray
partition: {partition}
nodes: 1
cpus_per_task: 2
timeout_min: 30
shared_folder: {shared}
"""


def first_epoch_on_disk(out: Path) -> bool:
    return any((out / results.EPOCHS).glob("*.parquet")) if (out / results.EPOCHS).is_dir() else False


def timed_sweep(cmd: list[str], out: Path, log: Path) -> dict[str, float]:
    """Run ``cmd``; note when the first epoch row appears; return the timings of the finished sweep."""
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
    return {"first_epoch_s": first or total, "total_s": total, "per_trial_s": span / n, "overhead_s": (span - train) / n}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--partition", default="debug")
    args = p.parse_args()
    if not os.environ.get("SLURM_CONF"):
        sys.exit("SLURM_CONF is not set: run this under cluster/local/slurm.sh run (or against your own SLURM)")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        spec = root / "latency.yaml"
        spec.write_text(SPEC.format(trials=args.trials))
        prof = root / "slurm.yaml"
        prof.write_text(PROFILE.format(partition=args.partition, shared=root / "shared"))
        local = timed_sweep([str(HAMSWEEP), "run", str(spec), "--out", str(root / "local")], root / "local", root / "local.log")
        slurm = timed_sweep([str(HAMSWEEP), "run", str(spec), "--cluster", str(prof), "--out", str(root / "slurm")],
                            root / "slurm", root / "slurm.log")
    print(f"{args.trials} one-epoch trials, one at a time, 1 CPU each; local SLURM partition {args.partition}")
    print(f"{'':28}{'local':>10}{'slurm (ray)':>14}{'ratio':>8}")
    for key, label in (("first_epoch_s", "launch -> first epoch, s"), ("total_s", "whole sweep, s"),
                       ("per_trial_s", "seconds per trial (span/N)"), ("overhead_s", "  of which between trials, s")):
        print(f"{label:28}{local[key]:10.2f}{slurm[key]:14.2f}{slurm[key] / local[key]:8.2f}")


if __name__ == "__main__":
    main()
