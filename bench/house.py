"""The shape of the package at two revisions, side by side (issue 19): modules, the imports between
them (every level, as ``tests/test_layers.py`` reads them), import circles, and the largest module
and class in lines, both revisions laid out by the project's ``ruff format`` first so that their
lines compare. Nothing is imported or run: each revision's ``hamsweep/`` is read from git.

    .venv/bin/python bench/house.py [OLD [NEW]]     # default: 8b70c57 (before the move) and HEAD
"""

from __future__ import annotations

import ast
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUFF = str(Path(sys.executable).with_name("ruff"))
sys.path.insert(0, str(REPO / "tests"))

from test_layers import circles, imports, module_names  # noqa: E402  (the test's own reader)


def shape(rev: str) -> dict[str, object]:
    """The figures of ``hamsweep/`` at git revision ``rev``."""
    archive = subprocess.run(
        ["git", "archive", rev, "hamsweep"], cwd=REPO, capture_output=True, check=True
    ).stdout
    with tempfile.TemporaryDirectory() as tmp, tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(tmp, filter="data")
        # lines are counted in one layout: the project's ruff format (line length 100) on both
        subprocess.run([RUFF, "format", "-q", "--config", str(REPO / "pyproject.toml"), tmp])
        names = module_names(Path(tmp) / "hamsweep")
        sources = {m: p.read_text() for m, p in names.items()}
    packages = {m for m, p in names.items() if p.name == "__init__.py"}
    arrows = imports(sources, packages)
    edges = {(a.src, a.dst) for a in arrows if a.dst in names and a.src != a.dst}
    lines = {m: len(s.splitlines()) for m, s in sources.items()}
    classes = [
        (n.end_lineno - n.lineno + 1, f"{m}.{n.name}")
        for m, s in sources.items()
        for n in ast.walk(ast.parse(s))
        if isinstance(n, ast.ClassDef)
    ]
    biggest_module = max(lines, key=lines.__getitem__)
    return {
        "modules": len(names),
        "folders (packages)": len(packages),
        "modules in the top folder": sum(1 for m in names if m.count(".") == 1),
        "import arrows between modules": len(edges),
        "import circles": len(circles(arrows, set(names))),
        "largest module (lines)": f"{lines[biggest_module]} {biggest_module}",
        "largest class (lines)": "{} {}".format(*max(classes)),
    }


def main() -> None:
    old, new = (sys.argv[1:] + ["8b70c57", "HEAD"][len(sys.argv[1:]) :])[:2]
    a, b = shape(old), shape(new)
    width = max(map(len, a))
    print(f"{'':{width}}  {old:>28}  {new:>28}")
    for key in a:
        print(f"{key:{width}}  {a[key]!s:>28}  {b[key]!s:>28}")


if __name__ == "__main__":
    main()
