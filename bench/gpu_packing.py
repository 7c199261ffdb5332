"""Small trials packed onto one GPU: 1, 2, 4 and 8 HAM trials at once through real hamsweep sweeps.

    python bench/gpu_packing.py [--packings 1,2,4,8] [--model preact_resnet18] [--batch 128]
                                [--train-size 5000] [--epochs 2]
                                [--precision fp32] [--pad-buckets] [--mps]
    python bench/gpu_packing.py --smoke          # the script itself, on the CPU, in a minute

For each packing p, one sweep of p trials (``resources.gpu: 1/p``, ``search.max_concurrent: p``, the
machine's CPUs shared alike) of the cifar100 shape (synthetic data: 100 classes of 32x32 RGB
images; the model and batch size given) runs one PGD-AT warm-up epoch and then HAM epochs, K = 10,
M = 3, no ASHA, no confirm stage, a small validation split. While it runs, ``nvidia-smi`` is asked
every second for each process's GPU memory (the largest per trial process is kept). From the
``epochs`` table, for the HAM epochs: each trial's training images/s, and the aggregate (the sum
over the trials, which all run at once). Printed per packing: aggregate images/s and its ratio to
one trial alone, the median trial's images/s, GPU memory per trial. Goal: 4 trials >= 2.5x one
trial's aggregate throughput. ``--mps``: the same again under CUDA MPS (its control daemon started
here with its own pipe folder, and stopped), when ``nvidia-cuda-mps-control`` is installed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hamsweep.results import store as results  # noqa: E402

GOAL = 2.5  # aggregate throughput of 4 packed trials over 1 alone


def spec(args: argparse.Namespace, packing: int) -> dict:
    gpu = 0 if args.smoke else 1 / packing
    cpus = os.cpu_count() or 1
    return {
        "name": f"packing{packing}",
        "data": {
            "name": "synthetic",
            "num_classes": 100 if not args.smoke else 4,
            "image_size": 32 if not args.smoke else 8,
            "train_size": args.train_size,
            "test_size": 100,
            "val_fraction": 0.02,
        },
        "model": {"name": args.model, **({"width": 8} if args.model == "small_cnn" else {})},
        "train": {
            "method": "ham",
            "epochs": args.epochs + 1,
            "batch_size": args.batch,
            "attack_steps": 10,
            "device": "cpu" if args.smoke else "cuda",
            "precision": args.precision,
            "channels_last": args.channels_last,
        },
        "ham": {"warmup_epochs": 1, "drop_step": 3, "pad_buckets": args.pad_buckets},
        "eval": {"attack_steps": 2, "every_epochs": 1},
        "scheduler": "none",
        "confirm": {"top_k": 0},
        "resources": {
            "cpu": max(cpus // packing, 1) if not args.smoke else 2 / packing,
            "gpu": gpu,
        },
        "search": {
            "num_samples": packing,
            "max_concurrent": packing,
            "params": {"ham.discard_threshold": {"uniform": [0.0, 0.5], "default": 0.0}},
        },
    }


class GpuMemory:
    """The largest GPU memory (MiB) of any compute process, sampled every second with nvidia-smi."""

    def __init__(self) -> None:
        self.most, self.done = 0, threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self.done.wait(1.0):
            proc = subprocess.run(
                [
                    "nvidia-smi",
                    "--query-compute-apps=pid,used_memory",
                    "--format=csv,noheader,nounits",
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            for line in proc.stdout.splitlines():
                try:
                    self.most = max(self.most, int(line.split(",")[1]))
                except (IndexError, ValueError):
                    continue

    def __enter__(self) -> GpuMemory:
        if shutil.which("nvidia-smi"):
            self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()


def run(
    args: argparse.Namespace, packing: int, folder: Path, env: dict[str, str]
) -> tuple[float, float, int]:
    """(aggregate images/s, median trial images/s, MiB per trial) of one sweep
    of ``packing`` trials."""
    path = folder / f"packing{packing}.yaml"
    path.write_text(yaml.safe_dump(spec(args, packing)))
    out, log = folder / f"packing{packing}", folder / f"packing{packing}.log"
    with GpuMemory() as memory, log.open("w") as f:
        proc = subprocess.run(
            [str(Path(sys.executable).with_name("hamsweep")), "run", str(path), "--out", str(out)],
            stdout=f,
            stderr=subprocess.STDOUT,
            env=env,
            check=False,
        )
    if proc.returncode:
        sys.exit(
            f"packing {packing}: hamsweep run exited {proc.returncode}:\n"
            + "\n".join(log.read_text().splitlines()[-15:])
        )
    rows = [r for r in results.read_table(out, results.EPOCHS).to_pylist() if r["phase"] == "ham"]
    per_trial: dict[str, list[float]] = {}
    for r in rows:
        per_trial.setdefault(r["trial"], []).append(r["images_per_s"])
    speeds = [statistics.median(v) for v in per_trial.values()]
    return sum(speeds), statistics.median(speeds), memory.most


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--packings", default="1,2,4,8", help="trials at once, comma-separated (default 1,2,4,8)"
    )
    p.add_argument("--model", default="preact_resnet18")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--train-size", type=int, default=5000)
    p.add_argument("--epochs", type=int, default=2, help="HAM epochs after the one warm-up epoch")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--pad-buckets", action="store_true")
    p.add_argument("--mps", action="store_true", help="also measure under CUDA MPS")
    p.add_argument(
        "--smoke",
        action="store_true",
        help="tiny, on the CPU: checks the script, measures nothing of a GPU",
    )
    p.add_argument("--keep", type=Path, default=None)
    args = p.parse_args()
    if args.smoke:
        args.model, args.batch, args.train_size, args.epochs, args.packings = (
            "small_cnn",
            32,
            256,
            1,
            "1,2",
        )
    packings = [int(x) for x in args.packings.split(",")]
    folder = args.keep or Path(tempfile.mkdtemp(prefix="gpu-packing-"))
    folder.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    modes = [("no MPS", env)]
    if args.mps and shutil.which("nvidia-cuda-mps-control"):
        mps = folder / "mps"
        mps.mkdir(exist_ok=True)
        modes.append(
            (
                "MPS",
                {**env, "CUDA_MPS_PIPE_DIRECTORY": str(mps), "CUDA_MPS_LOG_DIRECTORY": str(mps)},
            )
        )
    elif args.mps:
        print("--mps: nvidia-cuda-mps-control is not installed here; measuring without MPS only")
    print(
        f"{args.model}, batch {args.batch}, "
        f"{args.precision}{', channels_last' if args.channels_last else ''}"
        f"{', pad_buckets' if args.pad_buckets else ''}; {args.train_size} images, K=10, M=3; "
        f"folders in {folder}"
    )
    for label, mode_env in modes:
        if label == "MPS":
            subprocess.run(["nvidia-cuda-mps-control", "-d"], env=mode_env, check=True)
        where = folder / label.replace(" ", "_")
        where.mkdir(exist_ok=True)
        try:
            alone = None
            for packing in packings:
                total, median, mib = run(args, packing, where, mode_env)
                alone = alone or total
                print(
                    f"  {label:<6} {packing} at once: {total:8.0f} images/s in all "
                    f"({total / alone:.2f}x one alone), {median:7.0f} per trial, {mib} MiB GPU "
                    "memory per trial process"
                )
                if packing == 4:
                    print(
                        f"  goal (4 at once >= {GOAL:g}x one alone): "
                        f"{'met' if total / alone >= GOAL else 'NOT met'}"
                    )
        finally:
            if label == "MPS":
                subprocess.run(
                    ["nvidia-cuda-mps-control"],
                    input="quit\n",
                    text=True,
                    env=mode_env,
                    check=False,
                )


if __name__ == "__main__":
    main()
