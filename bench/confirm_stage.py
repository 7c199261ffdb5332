"""The confirm stage on the smoke spec: what it costs beside the search, and whether the search's
winner keeps its rank once confirmed over new seeds on the test split.

    .venv/bin/python bench/confirm_stage.py [--sweeps 3] [--top-k 3] [--seeds 2] [--keep DIR]

For each sweep seed s in 0..sweeps-1 it runs ``hamsweep run search_spaces/smoke.yaml --set
search.seed=s --set confirm.top_k=K --set confirm.seeds=N`` (search.seed changes the sampler's path;
the search's trials all train on train.seed 0, the confirm stage on 1..N), then reads its Parquet:

- cost: epochs the confirm stage's trials trained (a fork's inherited warm-up not counted, its
  trunks' epochs once) over the search's (its trunk included), beside ``hamsweep validate``'s
  prediction; and the same ratio of trial-seconds (the test evaluations are
  in these, not in epochs);
- rank: the K configs in the search's order (the validation objective at their best epoch, what
  chose them) against their order by the confirmed test mean of the objective's metric: whether the
  winner stays first, Kendall's tau between the two orders, each config's search value beside its
  confirmed value, and how many differences to PGD-AT have an interval that includes 0.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repo root, so the bench runs from a checkout without installing

from hamsweep.results import store as results  # noqa: E402
from hamsweep.spec import SweepSpec, validate  # noqa: E402
from hamsweep.spec.trial import objective_summary  # noqa: E402
from hamsweep.sweep.confirm import confirm_cost  # noqa: E402
from hamsweep.sweep.trunk import predicted_cost  # noqa: E402

HAMSWEEP = Path(sys.executable).with_name("hamsweep")  # the venv's console script
SMOKE = ROOT / "search_spaces" / "smoke.yaml"


def _sweep(folder: Path, seed: int, top_k: int, seeds: int) -> tuple[Path, float]:
    out = folder / f"sweep-{seed}"
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    sets = [f"search.seed={seed}", f"confirm.top_k={top_k}", f"confirm.seeds={seeds}"]
    start = time.perf_counter()
    with open(folder / f"sweep-{seed}.log", "w") as log:
        subprocess.run(
            [
                str(HAMSWEEP),
                "run",
                str(SMOKE),
                "--out",
                str(out),
                *[a for s in sets for a in ("--set", s)],
            ],
            check=True,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    return out, time.perf_counter() - start


def _cost(out: Path) -> tuple[float, float]:
    """(confirm epochs / search epochs, confirm trial-seconds / search trial-seconds)."""
    con = results.connect(out)
    epochs = dict(
        con.execute(
            "SELECT coalesce(t.stage, 'search'), count(*) FROM epochs e JOIN trials t USING "
            "(trial) GROUP BY 1"
        ).fetchall()
    )
    seconds = dict(
        con.execute(
            "SELECT coalesce(stage, 'search'), sum(wall_seconds) FROM trials GROUP BY 1"
        ).fetchall()
    )
    return epochs.get("confirm", 0) / epochs["search"], seconds.get("confirm", 0.0) / seconds[
        "search"
    ]


def _kendall(a: list[str], b: list[str]) -> float:
    """Kendall's tau between two orders of the same items (1: the same order, -1: reversed)."""
    pos = {x: i for i, x in enumerate(b)}
    pairs = [(i, j) for i in range(len(a)) for j in range(i + 1, len(a))]
    if not pairs:
        return 1.0
    agree = sum(1 if pos[a[i]] < pos[a[j]] else -1 for i, j in pairs)
    return agree / len(pairs)


def _ranks(out: Path, spec: SweepSpec) -> dict[str, object]:
    con = results.connect(out)
    key = objective_summary(spec.objective.primary)
    key = key if key in ("worst", "cvar", "mean") else "worst"
    attack = con.execute(
        "SELECT attack FROM confirm WHERE attack <> 'clean' "
        "ORDER BY attack = 'autoattack' DESC LIMIT 1"
    ).fetchone()[0]
    rows = con.execute(
        "SELECT label, search_value, mean, diff_low, diff_high FROM confirm WHERE role = 'confirm' "
        "AND attack = ? AND metric = ?",
        [attack, key],
    ).fetchall()
    base = con.execute(
        "SELECT mean FROM confirm WHERE role = 'baseline' AND attack = ? AND metric = ?",
        [attack, key],
    ).fetchone()
    by_search = [r[0] for r in sorted(rows, key=lambda r: -r[1])]
    by_test = [r[0] for r in sorted(rows, key=lambda r: -r[2])]
    includes = sum(1 for r in rows if r[3] is not None and r[3] <= 0 <= r[4])
    return {
        "search": by_search,
        "test": by_test,
        "kept": by_search[0] == by_test[0],
        "tau": _kendall(by_search, by_test),
        "values": {r[0]: (r[1], r[2]) for r in rows},
        "baseline": base[0] if base else None,
        "includes_zero": includes,
        "metric": f"{key} ({attack})",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sweeps", type=int, default=3)
    ap.add_argument("--top-k", type=int, default=3)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--keep", type=Path, default=None, help="keep the sweep folders here")
    args = ap.parse_args()
    folder = args.keep or Path(tempfile.mkdtemp(prefix="confirm-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    base = yaml.safe_load(SMOKE.read_text())
    base["confirm"] = {"top_k": args.top_k, "seeds": args.seeds}
    spec = validate(SweepSpec, {**base, "name": "smoke"})
    predicted = confirm_cost(spec)[0] / predicted_cost(spec).shared
    kept, taus, costs = 0, [], []
    for s in range(args.sweeps):
        out, wall = _sweep(folder, s, args.top_k, args.seeds)
        epochs, seconds = _cost(out)
        r = _ranks(out, spec)
        kept += bool(r["kept"])
        taus.append(r["tau"])
        costs.append((epochs, seconds))
        values = ", ".join(
            f"{lab} {100 * v[0]:.1f}->{100 * v[1]:.1f}" for lab, v in r["values"].items()
        )
        print(
            f"search.seed {s}: {wall:.0f} s; confirm/search epochs {epochs:.2f} (predicted "
            f"{predicted:.2f}), trial-seconds {seconds:.2f}; {r['metric']} search order "
            f"{' '.join(r['search'])}, confirmed order {' '.join(r['test'])} (winner kept: "
            f"{'yes' if r['kept'] else 'no'}, Kendall tau {r['tau']:+.2f}); val->test {values}; "
            f"PGD-AT {100 * (r['baseline'] or 0):.1f}; {r['includes_zero']} of {len(r['values'])} "
            "differences include 0",
            flush=True,
        )
    n = args.sweeps
    print(
        f"summary: the search's winner kept first place in {kept} of {n} sweeps; mean Kendall tau "
        f"{sum(taus) / n:+.2f}; confirm/search epochs {sum(c[0] for c in costs) / n:.2f} "
        f"(predicted {predicted:.2f}), trial-seconds {sum(c[1] for c in costs) / n:.2f}"
    )
    print(f"folders: {folder}")


if __name__ == "__main__":
    main()
