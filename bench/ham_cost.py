"""One HAM epoch vs one PGD-AT epoch from the same model state: is the saving real?

Trains small_cnn with PGD-AT for a few epochs (so that the share of hard AEs is realistic), then,
from that one state, times one PGD-AT epoch and one HAM epoch (alternating, ``--repeats`` each).
Prints the measured wall-time ratio, the measured pass ratio (forward+backward passes of attack and
training, counted by the trainer), and the ideal (M + (K - M + 1) h) / (K + 1) from the measured h.
Goal: wall ratio within 1.1x of the pass ratio.

    .venv/bin/python bench/ham_cost.py [--n 2560] [--warm 2] [--repeats 2] [--device auto]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile

import torch

from hamsweep.data import load
from hamsweep.spec import TrialConfig
from hamsweep.train import Trainer


def config(args: argparse.Namespace) -> TrialConfig:
    return TrialConfig.model_validate({
        "data": {"name": "synthetic", "num_classes": 10, "image_size": 32, "train_size": args.n, "val_fraction": 0.1},
        "model": {"name": "small_cnn", "width": 32},
        "train": {"method": "ham", "epochs": args.warm + 1, "batch_size": 128, "lr": 0.05, "attack_steps": args.k,
                  "device": args.device},
        "ham": {"warmup_epochs": args.warm, "drop_step": args.m},
        "eval": {"test": False},
    })


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=2560, help="training images (before the 10%% validation split)")
    p.add_argument("--warm", type=int, default=2, help="PGD-AT epochs before measuring")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--m", type=int, default=3)
    p.add_argument("--device", default="auto")
    args = p.parse_args()
    cfg = config(args)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, tmp, load(cfg.data))
        for epoch in range(args.warm):
            trainer.train_epoch(epoch)
        start = copy.deepcopy((trainer.model.state_dict(), trainer.optimizer.state_dict(), trainer.generator.get_state()))
        runs: dict[str, list] = {"pgd_at": [], "ham": []}
        for _ in range(args.repeats):
            for phase in runs:
                trainer.model.load_state_dict(start[0])
                trainer.optimizer.load_state_dict(start[1])
                trainer.generator.set_state(start[2])
                runs[phase].append(trainer.train_epoch(args.warm, phase=phase))
    report(runs, args, trainer.device)


def report(runs: dict[str, list], args: argparse.Namespace, device: torch.device) -> None:
    pgd, ham = runs["pgd_at"][0], runs["ham"][0]
    wall = statistics.median(r.seconds for r in runs["ham"]) / statistics.median(r.seconds for r in runs["pgd_at"])
    passes = (ham.attack_steps + ham.train_examples) / (pgd.attack_steps + pgd.train_examples)
    attack = ham.attack_steps / pgd.attack_steps
    h, k, m = ham.kept_fraction, args.k, args.m
    ideal = (m + (k - m + 1) * h) / (k + 1)
    print(f"device {device}, torch threads {torch.get_num_threads()}, {pgd.images} images, K={k}, M={m}")
    print(f"PGD-AT epoch: {[round(r.seconds, 2) for r in runs['pgd_at']]} s")
    print(f"HAM epoch:    {[round(r.seconds, 2) for r in runs['ham']]} s   hard fraction h = {h:.3f}")
    print(f"attack-step ratio (HAM / PGD-AT)        {attack:.3f}")
    print(f"pass ratio, measured (attack + train)   {passes:.3f}")
    print(f"pass ratio, ideal (M+(K-M+1)h)/(K+1)    {ideal:.3f}")
    print(f"wall-time ratio, measured               {wall:.3f}")
    print(f"wall / pass ratio                       {wall / passes:.3f}   (goal <= 1.10)")
    print(f"gradient-free status forwards at step M: {ham.decision_forwards} (one per image)")


if __name__ == "__main__":
    main()
