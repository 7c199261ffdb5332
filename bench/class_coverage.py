"""Coverage of the confirm stage's per-class intervals, by simulation: the old two-stage bootstrap
beside ``stats.class_intervals`` and ``stats.class_differences`` (issue 18).

    .venv/bin/python bench/class_coverage.py [--experiments 2000] [--seed 0]

The data-generating model, one simulated experiment = one config and its PGD-AT baseline on a
10-class test split (CIFAR-10's size: the fewest classes to pool the seed spread over), 100 test
images a class (CIFAR-100's, the smallest), ``seeds`` seeds:

- class c has a true accuracy mu_c, the same for config and baseline (a true difference of 0):
  mu = (0, 0.02, 0.5, 0.98, 1) -- the classes reported -- and (0.1, 0.3, 0.5, 0.7, 0.9) beside them;
- seed s draws p_cs from a Beta with mean mu_c and variance rho * mu_c(1 - mu_c) (one rho for all
  classes; the printed "sd" is the seed standard deviation at mu = 0.5, sqrt(rho) / 2; at the bounds
  p is the bound), through a Gaussian copula whose latent value is correlated 0.7 between the
  config's and the baseline's seed s when sd > 0 (the fork shares the seed's trunk);
- correct_cs ~ Binomial(100, p_cs), the two arms independently.

An interval covers when it contains mu_c (for the difference: 0). At mu = 0 and 1 every interval
that contains the bound covers, so the table also gives the mean width there: the old method's
[0, 0] covers too, but it claims certainty that 100 test images cannot give. Coverage is over
``--experiments`` experiments per row (standard error about 0.005 at 2000); the old method resamples
1000 times. About 3 minutes of one core (18 s of CPU at --experiments 200).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from scipy import stats as scipy_stats

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repo root, so the bench runs from a checkout without installing

from hamsweep.core.stats import class_differences, class_intervals  # noqa: E402

# true per-class accuracy; the first 5 reported
MU = np.array([0.0, 0.02, 0.5, 0.98, 1.0, 0.1, 0.3, 0.5, 0.7, 0.9])
REPORTED = 5
IMAGES = 100  # test images a class
SEEDS = (2, 3, 5)
SPREADS = (0.0, 0.03, 0.05, 0.10)  # seed sd at mu = 0.5, as a fraction
ARM_CORRELATION = 0.7  # of the config's and the baseline's latent seed effect
RESAMPLES = 1000  # the old bootstrap's


def simulate(
    rng: np.random.Generator, seeds: int, sd: float, experiments: int
) -> tuple[np.ndarray, np.ndarray]:
    """(experiments, seeds, classes) correct counts of the config and of the baseline."""
    z = rng.standard_normal((2, experiments, seeds, MU.size))
    z[1] = ARM_CORRELATION * z[0] + np.sqrt(1 - ARM_CORRELATION**2) * z[1]
    p = np.broadcast_to(MU, z.shape).copy()
    if sd > 0:
        rho = 4 * sd**2
        inner = (MU > 0) & (MU < 1)
        a, b = MU[inner] * (1 / rho - 1), (1 - MU[inner]) * (1 / rho - 1)
        p[..., inner] = scipy_stats.beta.ppf(scipy_stats.norm.cdf(z[..., inner]), a, b)
    counts = rng.binomial(IMAGES, p)
    return counts[0], counts[1]


def old_intervals(
    config: np.ndarray, baseline: np.ndarray, rng: np.random.Generator
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The replaced method (stats.class_intervals before issue 18) on (experiments, seeds, classes)
    counts: seeds with replacement, then each drawn seed's count from Binomial(n, correct / n); the
    2.5 and 97.5 percentiles of the mean. The difference: the same two stages on both arms, the seed
    indices drawn once for both (paired). Vectorised over experiments;
    (experiments, classes) each."""
    experiments, seeds, _ = config.shape
    drawn = rng.integers(0, seeds, size=(RESAMPLES, experiments, seeds, 1))
    a = rng.binomial(IMAGES, np.take_along_axis(config[None] / IMAGES, drawn, 2)) / IMAGES
    b = rng.binomial(IMAGES, np.take_along_axis(baseline[None] / IMAGES, drawn, 2)) / IMAGES
    ends = (2.5, 97.5)
    return {
        "old": tuple(np.percentile(a.mean(2), ends, axis=0)),
        "old_diff": tuple(np.percentile((a - b).mean(2), ends, axis=0)),
    }


def new_intervals(
    config: np.ndarray, baseline: np.ndarray
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """stats.class_intervals and stats.class_differences, one call per experiment;
    (experiments, classes) each."""
    n = np.full(config.shape[1:], IMAGES)
    found = [
        (class_intervals(n, c)[1:], class_differences(n, c, n, b)[1:])
        for c, b in zip(config, baseline)
    ]
    return {
        "new": tuple(np.array([f[0][i] for f in found]) for i in (0, 1)),
        "new_diff": tuple(np.array([f[1][i] for f in found]) for i in (0, 1)),
    }


def row(rng: np.random.Generator, seeds: int, sd: float, experiments: int) -> dict[str, np.ndarray]:
    """Coverage (classes,) and mean width (classes,) of the four intervals over ``experiments``."""
    config, baseline = simulate(rng, seeds, sd, experiments)
    found: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    # chunks: the old bootstrap holds resamples x chunk x seeds x classes
    for start in range(0, experiments, 100):
        c, b = config[start : start + 100], baseline[start : start + 100]
        for key, ends in {**old_intervals(c, b, rng), **new_intervals(c, b)}.items():
            found.setdefault(key, []).append(ends)
    out = {}
    for key, chunks in found.items():
        low, high = (
            np.concatenate([lo for lo, _ in chunks]),
            np.concatenate([hi for _, hi in chunks]),
        )
        truth = 0.0 if key.endswith("diff") else MU
        out[key] = ((low <= truth) & (truth <= high)).mean(0)
        out[f"{key}_width"] = (high - low).mean(0)
    return out


def table(rows: dict[tuple[int, float], dict[str, np.ndarray]], key: str, title: str) -> list[str]:
    """A Markdown table: one line per (seeds, sd), 'old / new' coverage per
    reported mu, width at 0."""
    head = " | ".join(f"p = {m:g}" for m in MU[:REPORTED])
    lines = [
        f"{title}: coverage, old / new (95% nominal)",
        "",
        f"| seeds | seed sd | {head} | width at p = 0 |",
        "|---" * (REPORTED + 3) + "|",
    ]
    for (seeds, sd), r in rows.items():
        cells = " | ".join(
            f"{r[f'old{key}'][c]:.3f} / {r[f'new{key}'][c]:.3f}" for c in range(REPORTED)
        )
        w0 = f"{r[f'old{key}_width'][0]:.3f} / {r[f'new{key}_width'][0]:.3f}"
        lines.append(f"| {seeds} | {100 * sd:g} pt | {cells} | {w0} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--experiments", type=int, default=2000, help="simulated experiments per row")
    ap.add_argument("--seed", type=int, default=0, help="numpy seed of the whole simulation")
    args = ap.parse_args()
    if args.experiments < 1:
        print(
            f"--experiments must be a positive integer but got {args.experiments}", file=sys.stderr
        )
        sys.exit(2)
    rng, start = np.random.default_rng(args.seed), time.perf_counter()
    rows = {(s, sd): row(rng, s, sd, args.experiments) for s in SEEDS for sd in SPREADS}
    print("\n".join(table(rows, "", "per-class interval (stats.class_intervals)")))
    print()
    print(
        "\n".join(
            table(
                rows,
                "_diff",
                "per-class paired difference to the baseline, true difference 0 "
                "(stats.class_differences)",
            )
        )
    )
    print(
        f"\n{args.experiments} experiments a row, 10 classes, {IMAGES} test images a class; "
        f"{time.perf_counter() - start:.0f} s"
    )


if __name__ == "__main__":
    main()
