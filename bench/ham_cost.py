"""One HAM epoch vs one PGD-AT epoch from the same model states: is the saving real?

Trains small_cnn with PGD-AT for a few epochs (so that the share of hard AEs is realistic), then
walks one epoch batch by batch: each batch is trained once with PGD-AT and once with HAM from the
same model, optimizer and RNG state (alternating which goes first), and the walk continues from
the HAM state. Pairing the two on every batch cancels the drift of a shared machine. Prints the
measured wall-time ratio, the measured pass ratio (forward+backward passes of attack and training,
as counted by the trainer), and the ideal (M + (K - M + 1) h) / (K + 1) from the measured h.
Goal: wall ratio within 1.1x of the pass ratio.

Also the work against the physical limit: the model's FLOPs per example of an attack step (forward
and the backward to the input), of a training step (forward, backward to weights and activations)
and of HAM's status forward, counted by ``torch.utils.flop_counter`` on the real model, times the
counts of the epoch, over its seconds: the achieved TFLOP/s of each phase, and its fraction of the
GPU's dense tensor-core peak (``--peak-tflops``, or the table below for known GPUs: TF32 for fp32,
since cuDNN runs fp32 convolutions in TF32 by default, bf16 for bf16).

    .venv/bin/python bench/ham_cost.py [--n 1280] [--warm 3] [--eps 8/255] [--device auto]
                                       [--model small_cnn] [--batch 128] [--classes 10]
                                       [--precision fp32|bf16]
                                       [--channels-last] [--pad-buckets] [--peak-tflops T]
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time

import torch

from hamsweep.core.data import load
from hamsweep.core.train import Tally, Trainer
from hamsweep.spec import TrialConfig

PHASES = ("pgd_at", "ham")
# dense tensor-core peaks, TFLOP/s: (TF32, BF16), from the vendors' data sheets (no sparsity)
PEAKS = {
    "H100": (494.7, 989.4),
    "H200": (494.7, 989.4),
    "A100": (156.0, 312.0),
    "L40S": (183.0, 362.0),
}


def config(args: argparse.Namespace) -> TrialConfig:
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
                "method": "ham",
                "epochs": args.warm + 1,
                "batch_size": args.batch,
                "lr": 0.05,
                "attack_steps": args.k,
                "eps": args.eps,
                "step_size": args.eps / 4,
                "device": args.device,
                "precision": args.precision,
                "channels_last": args.channels_last,
            },
            "ham": {
                "warmup_epochs": args.warm,
                "drop_step": args.m,
                "pad_buckets": args.pad_buckets,
            },
            "eval": {"test": False},
        }
    )


def snapshot(t: Trainer) -> tuple:
    return copy.deepcopy((t.model.state_dict(), t.optimizer.state_dict(), t.generator.get_state()))


def restore(t: Trainer, s: tuple) -> None:
    t.model.load_state_dict(s[0])
    t.optimizer.load_state_dict(s[1])
    t.generator.set_state(s[2])


def paired_epoch(t: Trainer, epoch: int) -> tuple[dict[str, float], dict[str, Tally]]:
    """Seconds and counts of PGD-AT and HAM on every batch of ``epoch``,
    each from the same state."""
    seconds, tallies = dict.fromkeys(PHASES, 0.0), {p: Tally() for p in PHASES}
    for b, (x, y) in enumerate(t.loader.epoch(epoch)):
        start = snapshot(t)
        order = PHASES if b % 2 == 0 else PHASES[::-1]
        for phase in order:
            restore(t, start)
            t.sync()
            tic = time.perf_counter()
            t.train_batch(phase, x, y, tallies[phase], epoch, b)
            t.sync()
            seconds[phase] += time.perf_counter() - tic
            if phase == "ham":
                after_ham = snapshot(t)
        restore(t, after_ham)  # walk on along the HAM trajectory
    return seconds, tallies


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--n", type=int, default=1280, help="training images (before the 10%% validation split)"
    )
    p.add_argument("--warm", type=int, default=3, help="PGD-AT epochs before measuring")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--m", type=int, default=3)
    p.add_argument("--eps", type=lambda s: eval(s, {}), default=8 / 255, help="e.g. 8/255")
    p.add_argument("--device", default="auto")
    p.add_argument("--model", default="small_cnn", help="small_cnn, preact_resnet18 or wrn34_10")
    p.add_argument("--width", type=int, default=32, help="small_cnn's width")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument(
        "--classes",
        type=int,
        default=10,
        help="classes of the synthetic 32x32 data (100: the CIFAR-100 shape)",
    )
    p.add_argument("--precision", default="fp32", help="fp32 or bf16 (autocast)")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument(
        "--pad-buckets",
        action="store_true",
        help="ham.pad_buckets: the kept AEs padded to a power of two",
    )
    p.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="the GPU's peak for this precision (default: PEAKS by name)",
    )
    args = p.parse_args()
    cfg = config(args)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, tmp, load(cfg.data))
        for epoch in range(args.warm):
            trainer.train_epoch(epoch)
        seconds, tallies = paired_epoch(trainer, args.warm)
        flops = flops_per_example(trainer)
    report(seconds, tallies, args, trainer.device)
    report_limits(seconds, tallies, flops, args, trainer.device)


def flops_per_example(t: Trainer) -> dict[str, float]:
    """FLOPs of one example's attack step, training step and status forward, counted on the model
    (a batch of 8, divided by 8) under the trainer's precision and memory format."""
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    x, y = next(iter(t.loader.epoch(0)))
    x, y = x[:8], y[:8]
    counts = {}
    with t._autocast():
        t.model.eval()
        # what pgd_step computes: the forward and the backward to the input only (FlopCounterMode
        # cannot follow autograd.grad, so .backward() with the weights frozen)
        params = [p for p in t.model.parameters() if p.requires_grad]
        for p in params:
            p.requires_grad_(False)
        with FlopCounterMode(display=False) as fc:
            F.cross_entropy(
                t.model(x.clone().requires_grad_(True)).float(), y, reduction="sum"
            ).backward()
        for p in params:
            p.requires_grad_(True)
        counts["attack"] = fc.get_total_flops() / 8
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            t.model(x)
        counts["forward"] = fc.get_total_flops() / 8
        t.model.train()
        with FlopCounterMode(display=False) as fc:
            F.cross_entropy(t.model(x).float(), y).backward()
        counts["train"] = fc.get_total_flops() / 8
    t.model.zero_grad(set_to_none=True)
    return counts


def report_limits(
    seconds: dict[str, float],
    tallies: dict[str, Tally],
    flops: dict[str, float],
    args: argparse.Namespace,
    device: torch.device,
) -> None:
    peak = args.peak_tflops
    if peak is None and device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = next((p[args.precision == "bf16"] for key, p in PEAKS.items() if key in name), None)
    print(
        f"FLOPs per example: attack step {flops['attack'] / 1e6:.1f} M, training step "
        f"{flops['train'] / 1e6:.1f} M, status forward {flops['forward'] / 1e6:.1f} M"
    )
    for phase in PHASES:
        tally = tallies[phase]
        total = (
            tally.attack_steps * flops["attack"]
            + tally.train_examples * flops["train"]
            + tally.decisions * flops["forward"]
        )
        achieved = total / seconds[phase] / 1e12
        limit = (
            f", {achieved / peak:.1%} of the {peak:g} TFLOP/s peak"
            if peak
            else " (peak unknown: --peak-tflops)"
        )
        print(
            f"{phase:<7} {total / 1e12:8.2f} TFLOP in {seconds[phase]:.2f} s = {achieved:.2f} "
            f"TFLOP/s{limit}"
        )


def report(
    seconds: dict[str, float],
    tallies: dict[str, Tally],
    args: argparse.Namespace,
    device: torch.device,
) -> None:
    pgd, ham = tallies["pgd_at"], tallies["ham"]
    wall = seconds["ham"] / seconds["pgd_at"]
    passes = (ham.attack_steps + ham.train_examples) / (pgd.attack_steps + pgd.train_examples)
    h, k, m = ham.train_examples / ham.images, args.k, args.m
    ideal = (m + (k - m + 1) * h) / (k + 1)
    print(
        f"model {args.model} ({args.precision}{', channels_last' if args.channels_last else ''}), "
        f"batch {args.batch}, device {device}, torch threads {torch.get_num_threads()}, "
        f"{pgd.images} images, eps {args.eps * 255:.0f}/255, K={k}, M={m}, after {args.warm} "
        "PGD-AT epochs"
    )
    print(
        f"seconds over the epoch: PGD-AT {seconds['pgd_at']:.2f}, HAM {seconds['ham']:.2f}; hard "
        f"fraction h = {h:.3f}"
    )
    print(f"attack-step ratio (HAM / PGD-AT)        {ham.attack_steps / pgd.attack_steps:.3f}")
    print(f"pass ratio, measured (attack + train)   {passes:.3f}")
    print(f"pass ratio, ideal (M+(K-M+1)h)/(K+1)    {ideal:.3f}")
    print(f"wall-time ratio, measured               {wall:.3f}")
    print(f"wall / pass ratio                       {wall / passes:.3f}   (goal <= 1.10)")
    print(
        f"HAM's gradient-free status forwards at step M: {ham.decisions} (one per image, not in "
        "the pass count)"
    )


if __name__ == "__main__":
    main()
