"""Loading an image folder: the first load (decode every file, resize, write the cache) against a
cached load, in time and memory, in one run.

    .venv/bin/python bench/imagefolder_load.py [--images 10000] [--size 32] [--source 64]
                                               [--keep DIR]

It writes ``--images`` random RGB images of ``--source`` x ``--source`` pixels (half PNG, half JPEG)
as an ImageFolder of 10 classes (train 80%, test 20%), then loads it with ``data.name: imagefolder``
and ``data.image_size: --size`` in a fresh process twice: first without a cache, then with the cache
the first load wrote. Each process reports its wall time for ``data.load`` (torchvision and PIL
imported before the clock starts) and its peak resident memory (``ru_maxrss``: the process with
torch imported), beside the size of the decoded arrays and of the cache files.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the writers of the tests' on-disk formats

_MEASURE = """
import json, resource, sys, time
sys.path.insert(0, {root!r})
from hamsweep.core import data
from hamsweep.spec import DataConfig
import torchvision.datasets, PIL.Image  # imported before the clock starts: \
their ~1 s is the same either way
start = time.perf_counter()
ds = data.load(DataConfig(name="imagefolder", root={folder!r}, image_size={size}))
seconds = time.perf_counter() - start
arrays = sum(s.images.numel() for s in (ds.train, ds.val, ds.test))
print(json.dumps({{"seconds": seconds, \
"peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "arrays_mb": arrays / 1e6}}))
"""


def _measure(folder: Path, size: int) -> dict[str, float]:
    code = _MEASURE.format(root=str(ROOT), folder=str(folder), size=size)
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    from cifar_files import write_images

    from hamsweep.core import folders

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=10_000)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--source", type=int, default=64)
    ap.add_argument("--keep", type=Path, default=None)
    args = ap.parse_args()
    folder = args.keep or Path(tempfile.mkdtemp(prefix="imagefolder-bench-"))
    per_class = args.images // 10
    for c in range(10):
        n_test = per_class // 5
        write_images(
            folder / "train" / f"class{c}", per_class - n_test, (args.source, args.source), seed=c
        )
        write_images(
            folder / "test" / f"class{c}", n_test, (args.source, args.source), seed=100 + c
        )
    first, cached = _measure(folder, args.size), _measure(folder, args.size)
    cache_mb = sum(p.stat().st_size for p in (folder / folders.CACHE_DIR).glob("*.npz")) / 1e6
    print(
        f"{args.images} images of {args.source}x{args.source} -> {args.size}x{args.size}: first "
        f"load {first['seconds']:.1f} s (peak RSS {first['peak_mb']:.0f} MB), cached "
        f"{cached['seconds']:.2f} s (peak RSS {cached['peak_mb']:.0f} MB): "
        f"{first['seconds'] / cached['seconds']:.0f}x faster; arrays {first['arrays_mb']:.1f} MB, "
        f"cache files {cache_mb:.1f} MB"
    )
    print(f"folder: {folder}")


if __name__ == "__main__":
    main()
