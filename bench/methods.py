"""Every training method's epoch against PGD-AT's on the same batches from the same model.

Trains small_cnn with PGD-AT for a few epochs, then, from that one state, trains the next epoch
once with each registered method (the same batches: the loader's order is a function of the seed
and the epoch) and runs its per-epoch hook (``end_epoch``: FRL's and WAT's validation passes,
CFA's weight average, DAFA's similarities). Each method first runs the epoch once untimed, so that
state a method builds at its first epoch (DAFA's class similarities) is in place and the timed
epoch is a steady one; then the model, optimizer and generator go back to the shared state and the
epoch is timed. The methods' order rotates over ``--rounds`` rounds and the median is kept, which
cancels most of a shared machine's drift. Prints per method: seconds of the training epoch and of
its hook, their sum over PGD-AT's, and the attack example-steps of the epoch (forward + backward
each) over PGD-AT's; then the same two ratios for the method's first epoch (one round, untimed
above), where a method builds its state (DAFA attacks the whole training split once).

    .venv/bin/python bench/methods.py [--n 1280] [--warm 2] [--rounds 3] [--device auto]
                                      [--model small_cnn] [--batch 128] [--classes 10]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from dataclasses import replace

import torch

from hamsweep.core import methods
from hamsweep.core.data import load
from hamsweep.core.train import Trainer
from hamsweep.spec import TrialConfig


def config(args: argparse.Namespace, name: str) -> TrialConfig:
    """A trial of method ``name`` whose epoch ``args.warm`` (0-based) is its own: a forking method
    forks at ``args.warm``."""
    method = methods.get(name)
    sections: dict = {}
    if method.fork_key:
        section, key = method.fork_key.split(".")
        sections[section] = {key: args.warm}
    return TrialConfig.model_validate(
        {
            "data": {
                "name": "synthetic",
                "num_classes": args.classes,
                "image_size": 32,
                "train_size": args.n,
                "val_fraction": 0.1,
            },
            "model": {
                "name": args.model,
                **({"width": args.width} if args.model == "small_cnn" else {}),
            },
            "train": {
                "method": name,
                "epochs": args.warm + 2,
                "batch_size": args.batch,
                "lr": 0.05,
                "attack_steps": args.k,
                "device": args.device,
            },
            "eval": {"test": False, "attack_steps": args.k},
            **sections,
        }
    )


def one_epoch(t: Trainer, name: str, epoch: int) -> tuple[float, float, int, int]:
    """(seconds training, seconds of end_epoch, attack example-steps, images) of ``epoch`` with
    method ``name``."""
    method = methods.get(name)
    t.sync()
    tic = time.perf_counter()
    record = t.train_epoch(epoch, phase=name)
    t.sync()
    trained = time.perf_counter() - tic
    tic = time.perf_counter()
    method.end_epoch(t, replace(record, evals=()))
    t.sync()
    return trained, time.perf_counter() - tic, record.attack_steps, record.images


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1280, help="training images before the 10%% split")
    p.add_argument("--warm", type=int, default=2, help="PGD-AT epochs before measuring")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--k", type=int, default=10, help="train.attack_steps")
    p.add_argument("--device", default="auto")
    p.add_argument("--model", default="small_cnn", help="small_cnn, preact_resnet18 or wrn34_10")
    p.add_argument("--width", type=int, default=32, help="small_cnn's width")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--methods", default=",".join(methods.names()), help="comma-separated")
    args = p.parse_args()
    names = args.methods.split(",")
    base = config(args, methods.TRUNK_METHOD)
    data = load(base.data)
    with tempfile.TemporaryDirectory() as tmp:
        trainers = {n: Trainer(config(args, n), f"{tmp}/{n}", data) for n in names}
        warm = trainers[names[0]]
        for epoch in range(args.warm):
            warm.train_epoch(epoch, phase=methods.TRUNK_METHOD)
        shared = copy.deepcopy(
            (warm.model.state_dict(), warm.optimizer.state_dict(), warm.generator.get_state())
        )

        def reset(t: Trainer) -> None:
            t.model.load_state_dict(shared[0])
            t.optimizer.load_state_dict(shared[1])
            t.generator.set_state(shared[2])

        first = {}  # each method's first epoch builds its state (DAFA's similarities): apart
        for n, t in trainers.items():
            reset(t)
            first[n] = one_epoch(t, n, args.warm)
        runs: dict[str, list[tuple[float, float, int, int]]] = {n: [] for n in names}
        for r in range(args.rounds):
            for n in names[r % len(names) :] + names[: r % len(names)]:
                t = trainers[n]
                state = copy.deepcopy(t.method_state)
                reset(t)
                runs[n].append(one_epoch(t, n, args.warm))
                t.method_state = state  # every round starts from the same method state
    device = warm.device
    print(
        f"model {args.model}, batch {args.batch}, device {device}, torch threads "
        f"{torch.get_num_threads()}, {args.n} images ({args.classes} classes), K={args.k}, after "
        f"{args.warm} PGD-AT epochs; median of {args.rounds} rounds"
    )
    ref = runs[methods.TRUNK_METHOD]
    ref_s = statistics.median(a + b for a, b, _, _ in ref)
    ref_steps = ref[0][2]
    print(
        f"{'method':<10} {'train s':>8} {'hook s':>8} {'epoch / PGD-AT':>15} "
        f"{'attack steps':>13} {'/ PGD-AT':>9} {'1st epoch / PGD-AT':>19} {'its steps':>10}"
    )
    ref_first = sum(first[methods.TRUNK_METHOD][:2])
    for n in names:
        train_s = statistics.median(a for a, _, _, _ in runs[n])
        hook_s = statistics.median(b for _, b, _, _ in runs[n])
        total = statistics.median(a + b for a, b, _, _ in runs[n])
        steps = runs[n][0][2]
        print(
            f"{n:<10} {train_s:8.2f} {hook_s:8.2f} {total / ref_s:15.2f} {steps:13d} "
            f"{steps / ref_steps:9.2f} {sum(first[n][:2]) / ref_first:19.2f} "
            f"{first[n][2] / ref_steps:10.2f}"
        )


if __name__ == "__main__":
    main()
