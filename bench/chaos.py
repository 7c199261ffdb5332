"""The chaos test at length: a tiny sweep with a shared trunk and a confirm stage, ``--faults``
faults at seeded random moments (``tests/chaos.py``), against the same sweep
without faults, in one run.

    .venv/bin/python bench/chaos.py [--faults 100] [--seed 1] [--samples 8] [--keep DIR]

Prints the faults injected by kind, whether the sweep finished with every invariant holding (rows
lost: 0 means every trial's epochs are contiguous and every search trial is there once), and the
extra wall time the faults cost against the fault-free run.
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import yaml  # noqa: E402
from chaos import invariants, run_with_faults  # noqa: E402

HAMSWEEP = Path(sys.executable).with_name("hamsweep")


def _spec(folder: Path, samples: int) -> Path:
    spec = {
        "name": "chaos",
        "data": {
            "name": "synthetic",
            "num_classes": 4,
            "image_size": 8,
            "train_size": 2048,
            "test_size": 64,
            "val_fraction": 0.25,
        },
        "model": {"name": "small_cnn", "width": 4},
        "train": {"method": "ham", "epochs": 6, "batch_size": 64, "lr": 0.05, "attack_steps": 3},
        "ham": {"warmup_epochs": 2, "drop_step": 1},
        "eval": {"attack_steps": 3},
        "objective": {"metric": "mean_robust"},
        "scheduler": {"grace_period": 4, "reduction_factor": 2},
        "confirm": {"top_k": 1, "seeds": 1},
        "search": {
            "seed": 0,
            "num_samples": samples,
            "max_concurrent": 2,
            "params": {
                "ham.discard_threshold": {"uniform": [0.0, 0.9], "default": 0.0},
                "ham.warmup_epochs": {"int": [1, 3], "default": 2},
                "ham.temperature": {"choice": [None, 1.0], "default": None},
            },
        },
    }
    path = folder / "chaos.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--faults", type=int, default=100)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--keep", type=Path, default=None)
    args = ap.parse_args()
    folder = args.keep or Path(tempfile.mkdtemp(prefix="chaos-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    spec = _spec(folder, args.samples)
    clean = run_with_faults(str(HAMSWEEP), spec, folder / "clean", 0, args.seed)
    start = time.monotonic()
    chaos = run_with_faults(
        str(HAMSWEEP),
        spec,
        folder / "chaos",
        args.faults,
        args.seed,
        max_starts=10 * args.faults + 10,
    )
    problems = invariants(folder / "chaos", args.samples) if chaos.finished else ["did not finish"]
    kinds = ", ".join(f"{k} {n}" for k, n in sorted(collections.Counter(chaos.injected).items()))
    print(
        f"faults injected {len(chaos.injected)} ({kinds}); finished: {chaos.finished} after "
        f"{chaos.starts} starts; invariants: "
        f"{'all hold, rows lost 0' if not problems else '; '.join(problems)}"
    )
    print(
        f"wall time: {chaos.seconds:.0f} s with faults against {clean.seconds:.0f} s without "
        f"({chaos.seconds / clean.seconds:.1f}x); seed {args.seed}; folders {folder}; "
        f"{time.monotonic() - start:.0f} s"
    )


if __name__ == "__main__":
    main()
