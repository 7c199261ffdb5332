"""PGD-AT vs HAM trained for the same epochs on synthetic data with unequal class difficulty.

Three methods, a few seeds: PGD-AT; HAM with the paper's defaults (tau = 0, rho = 0, uniform
weights); HAM keeping 30% of easy AEs (the paper's CIFAR-100 setting). Reports, on the validation
split, worst-class and mean PGD-20 accuracy, clean accuracy, the attack compute ratio vs PGD-AT and
the wall time: whatever it shows. "3 worst" is CVaR-3 (mean of the three weakest classes).

    .venv/bin/python bench/ham_vs_pgdat.py [--seeds 3] [--epochs 8] [--warmup 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile

from hamsweep.core.data import load
from hamsweep.core.train import run
from hamsweep.spec import TrialConfig

METHODS = {
    "pgd_at": {"train": {"method": "pgd_at"}},
    "ham": {"train": {"method": "ham"}},
    "ham_keep30": {"train": {"method": "ham"}, "ham": {"keep_easy_fraction": 0.3}},
}


def config(method: dict, seed: int, args: argparse.Namespace) -> TrialConfig:
    base = {
        "data": {
            "name": "synthetic",
            "num_classes": 10,
            "image_size": 16,
            "train_size": args.n,
            "val_fraction": 0.2,
        },
        "model": {"name": "small_cnn", "width": 16},
        "train": {"epochs": args.epochs, "batch_size": 64, "lr": 0.05, "seed": seed},
        "ham": {"warmup_epochs": args.warmup, "drop_step": 3},
        "eval": {"every_epochs": args.epochs, "attack_steps": 20, "test": False},
    }
    for section, values in method.items():
        base[section] = {**base[section], **values}
    return TrialConfig.model_validate(base)


def one(method: dict, seed: int, args: argparse.Namespace, dataset) -> dict[str, float]:
    cfg = config(method, seed, args)
    with tempfile.TemporaryDirectory() as tmp:
        records = run(cfg, workdir=tmp, dataset=dataset)
    final = {e.attack: e.summary(0.3) for e in records[-1].evals}
    return {
        "robust_worst": final["pgd20"]["worst"],
        "robust_cvar": final["pgd20"]["cvar"],
        "robust_mean": final["pgd20"]["mean"],
        "clean_mean": final["clean"]["mean"],
        "attack_steps": sum(r.attack_steps for r in records),
        "seconds": sum(r.seconds for r in records),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--n", type=int, default=2500)
    args = p.parse_args()
    dataset = load(config(METHODS["pgd_at"], 0, args).data)
    results = {
        name: [one(m, seed, args, dataset) for seed in range(args.seeds)]
        for name, m in METHODS.items()
    }
    base_steps = statistics.mean(r["attack_steps"] for r in results["pgd_at"])
    base_time = statistics.mean(r["seconds"] for r in results["pgd_at"])
    print(
        f"{args.seeds} seeds, {args.epochs} epochs ({args.warmup} PGD-AT warm-up for HAM), val "
        "split, mean ± sd"
    )
    print(
        f"{'method':<11} {'worst PGD-20':>14} {'3 worst PGD-20':>15} {'mean PGD-20':>14} "
        f"{'clean':>14} {'attack':>7} {'wall':>7}"
    )
    for name, rs in results.items():
        cells = [
            _ms([r[k] for r in rs])
            for k in ("robust_worst", "robust_cvar", "robust_mean", "clean_mean")
        ]
        steps = statistics.mean(r["attack_steps"] for r in rs) / base_steps
        wall = statistics.mean(r["seconds"] for r in rs) / base_time
        print(
            f"{name:<11} {cells[0]:>14} {cells[1]:>15} "
            f"{cells[2]:>14} {cells[3]:>14} {steps:7.3f} {wall:7.3f}"
        )


def _ms(xs: list[float]) -> str:
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{100 * statistics.mean(xs):5.1f} ± {100 * sd:4.1f}"


if __name__ == "__main__":
    main()
