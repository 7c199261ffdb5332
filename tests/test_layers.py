"""Imports point one way (issue 19): the package's imports, read with ``ast`` (nothing is imported),
form no circle, never point up a layer, and keep the heavy libraries out of the layers that must
not need them.

Which imports count:
- Layers and circles are judged on every import of one hamsweep module by another: at module
  level, inside a function, and under ``if TYPE_CHECKING:``. The house defers heavy imports into
  functions on purpose (STYLE: "heavy imports inside functions so the CLI starts fast"), but
  deferring an import changes when a module is loaded, not whether one module needs the other: a
  circle closed by a function-level or a ``TYPE_CHECKING`` import (``launch/jobs`` <->
  ``launch/slurm``, ``sweep/recorder`` <-> ``sweep/driver`` before issue 19) is a circle a reader
  still has to untangle, and a layer that imports upward inside a function still depends on it.
- The banned libraries are judged on every import too, at any level: a ``ray`` imported inside a
  function of ``core/`` still ties the science to Ray.
- Importing ``a.b.c`` runs the packages ``a`` and ``a.b`` first; that implied import is not an
  arrow (every submodule would otherwise import its package, and a package that imports its own
  submodules would be a circle). A package's ``__init__.py`` is a module of its own here: what it
  imports are its arrows.
- ``from pkg import name`` is an arrow to ``pkg.name`` when that is a module of the package, else
  to ``pkg``. Names imported through ``importlib`` (``hamsweep._moved``'s alias table, the lazy
  ``__getattr__`` of ``hamsweep``, ``hamsweep.results`` and ``hamsweep.sweep``) are no arrows.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "hamsweep"
ROOT = "hamsweep"

# the layers, low to high: a module may import its own layer and those below, never one above.
# A module is in the layer of its longest matching prefix (``ROOT`` itself matches only itself).
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("ground", ("hamsweep.errors", "hamsweep.keys", "hamsweep.rundir", "hamsweep._moved")),
    # what the spec validates names against: torch-free facts, importing only the ground
    ("registries", ("hamsweep.core.datasets",)),
    ("spec base", ("hamsweep.spec._base",)),  # the frozen model the method sections build on
    # the training methods: each module's spec section (torch-free, which the spec assembles into
    # the trial config) and its step (torch inside it), with the attacks the steps call
    ("methods", ("hamsweep.core.methods", "hamsweep.core.attacks")),
    ("spec", ("hamsweep.spec",)),
    ("core", ("hamsweep.core",)),  # the rest of the science: data, models, train, metrics, stats
    ("results", ("hamsweep.results",)),
    # reads results/ (and core's metrics) only, never the sweep engine; below sweep/, whose
    # standalone trial prints report.summary's summary
    ("report", ("hamsweep.report",)),
    ("sweep", ("hamsweep.sweep",)),
    ("launch", ("hamsweep.launch",)),
    ("top", ("hamsweep.cli", "hamsweep._entry", ROOT)),
)

# circles known and left to the work that owns them: each is an expected failure of its own
# (strict: once it is broken the test says so, and its entry goes); any other circle fails
# test_no_import_circle
KNOWN_CIRCLES: dict[frozenset[str], str] = {}

# folder -> libraries no module under it may import, at any level
BANNED: dict[str, tuple[str, ...]] = {
    "hamsweep.core": ("ray", "optuna", "submitit", "duckdb"),
    "hamsweep.results": ("ray",),
    "hamsweep.report": ("ray",),
}


@dataclass(frozen=True)
class Import:
    """One import statement's arrow: ``src`` imports ``dst`` at ``line``; ``where`` is 'module
    level', 'function level' or 'TYPE_CHECKING'."""

    src: str
    dst: str
    line: int
    where: str

    def at(self, files: dict[str, str]) -> str:
        return f"{files.get(self.src, self.src)}:{self.line} ({self.where})"


def module_names(package: Path, root: str = ROOT) -> dict[str, Path]:
    """Dotted module name -> its file, for every .py file under ``package``."""
    out = {}
    for path in sorted(package.rglob("*.py")):
        parts = [root, *path.relative_to(package).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _statements(tree: ast.AST) -> list[tuple[ast.Import | ast.ImportFrom, str]]:
    """Every import statement in ``tree`` with where it stands."""
    found: list[tuple[ast.Import | ast.ImportFrom, str]] = []

    def walk(node: ast.AST, where: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                found.append((child, where))
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                walk(child, "function level")
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.body:
                    walk(ast.Module(body=[stmt], type_ignores=[]), _deeper(where, "TYPE_CHECKING"))
                for stmt in child.orelse:
                    walk(ast.Module(body=[stmt], type_ignores=[]), where)
            else:
                walk(child, where)

    walk(tree, "module level")
    return found


def _deeper(where: str, inner: str) -> str:
    return inner if where == "module level" else where


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _base(src: str, node: ast.ImportFrom, is_package: bool) -> str:
    """The module a ``from ... import`` names, relative imports resolved against ``src``."""
    if not node.level:
        return node.module or ""
    parts = src.split(".") if is_package else src.split(".")[:-1]
    parts = parts[: len(parts) - (node.level - 1)]
    return ".".join([*parts, *([node.module] if node.module else [])])


def imports(sources: dict[str, str], packages: set[str]) -> list[Import]:
    """Every arrow of ``sources`` (module name -> its source; ``packages``: the names that are
    packages), to modules of ``sources`` and to outside libraries alike (then ``dst`` is the
    imported name as written)."""
    arrows = []
    for src, text in sources.items():
        for node, where in _statements(ast.parse(text)):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = _base(src, node, src in packages)
                targets = [
                    f"{base}.{a.name}" if f"{base}.{a.name}" in sources else base
                    for a in node.names
                ]
            for dst in dict.fromkeys(targets):
                arrows.append(Import(src, _known(dst, sources), node.lineno, where))
    return arrows


def _known(name: str, sources: dict[str, str]) -> str:
    """``name``, or its longest prefix that is a module of ``sources`` (``import a.b.X``)."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in sources:
            return ".".join(parts[:n])
    return name


def layer_of(module: str, layers: tuple[tuple[str, tuple[str, ...]], ...] = LAYERS) -> int | None:
    """The index in ``layers`` of ``module``'s longest matching prefix; None: in no layer."""
    best: tuple[int, int] | None = None  # (prefix length, layer index)
    for i, (_, prefixes) in enumerate(layers):
        for p in prefixes:
            matches = module == p or (p != ROOT and module.startswith(p + "."))
            if matches and (best is None or len(p) > best[0]):
                best = (len(p), i)
    return None if best is None else best[1]


def circles(arrows: list[Import], modules: set[str]) -> list[list[Import]]:
    """The import circles among ``modules``: each strongly connected set of two or more modules (or
    one that imports itself), as the arrows that run inside it."""
    inside = [a for a in arrows if a.dst in modules and a.src in modules]
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for a in inside:
        graph[a.src].add(a.dst)
    found = []
    for group in _strongly_connected(graph):
        if len(group) > 1 or any(a.src == a.dst for a in inside if a.src in group):
            found.append(sorted((a for a in inside if a.src in group and a.dst in group), key=_key))
    return found


def _key(a: Import) -> tuple[str, int, str]:
    return (a.src, a.line, a.dst)


def _strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's algorithm, iterative (no recursion limit on a deep package)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.add(member)
                    if member == node:
                        break
                groups.append(group)
    return groups


def upward(
    arrows: list[Import], layers: tuple[tuple[str, tuple[str, ...]], ...] = LAYERS
) -> list[Import]:
    """The arrows from a module to one in a higher layer."""
    out = []
    for a in arrows:
        src, dst = layer_of(a.src, layers), layer_of(a.dst, layers)
        if src is not None and dst is not None and dst > src:
            out.append(a)
    return out


def banned(arrows: list[Import], rules: dict[str, tuple[str, ...]] = BANNED) -> list[Import]:
    """The arrows to a library that the importing module's folder may not import."""
    out = []
    for a in arrows:
        for folder, libraries in rules.items():
            inside = a.src == folder or a.src.startswith(folder + ".")
            if inside and a.dst.split(".")[0] in libraries:
                out.append(a)
    return out


# ---- the checks on the package ----
def _package() -> tuple[list[Import], dict[str, str], set[str]]:
    """The package's arrows, its module -> file path table (for messages), its module names."""
    names = module_names(PACKAGE)
    sources = {m: p.read_text() for m, p in names.items()}
    packages = {m for m, p in names.items() if p.name == "__init__.py"}
    files = {m: str(p.relative_to(PACKAGE.parent)) for m, p in names.items()}
    return imports(sources, packages), files, set(names)


def _describe(arrow: Import, files: dict[str, str]) -> str:
    return f"{arrow.src} -> {arrow.dst} at {arrow.at(files)}"


def test_the_package_is_read() -> None:
    """The checks below see the package: its modules, and arrows of every kind (a parser that
    found nothing would pass them all)."""
    arrows, _, modules = _package()
    assert {"hamsweep.cli", "hamsweep.core.train", "hamsweep.sweep.driver"} <= modules
    assert len(modules) >= 30
    internal = [a for a in arrows if a.dst in modules]
    assert {a.where for a in internal} >= {"module level", "function level", "TYPE_CHECKING"}
    assert any(a.dst.split(".")[0] == "ray" for a in arrows)  # a library arrow: sweep imports ray


def test_every_module_is_in_a_layer() -> None:
    _, _, modules = _package()
    loose = sorted(m for m in modules if layer_of(m) is None)
    assert not loose, f"modules in no layer of {__name__}.LAYERS (add them): {', '.join(loose)}"


def _circles_found() -> tuple[list[list[Import]], dict[str, str]]:
    arrows, files, modules = _package()
    return circles(arrows, modules), files


def _circle_text(circle: list[Import], files: dict[str, str]) -> str:
    members = ", ".join(sorted({a.src for a in circle}))
    return f"circle of {members}:\n    " + "\n    ".join(_describe(a, files) for a in circle)


def test_no_import_circle() -> None:
    found, files = _circles_found()
    new = [c for c in found if frozenset(a.src for a in c) not in KNOWN_CIRCLES]
    assert not new, "import circles:\n" + "\n".join(_circle_text(c, files) for c in new)


@pytest.mark.parametrize(
    "members",
    [
        pytest.param(members, marks=pytest.mark.xfail(reason=reason, strict=True))
        for members, reason in KNOWN_CIRCLES.items()
    ],
    ids=lambda members: " <-> ".join(sorted(m.rsplit(".", 1)[-1] for m in members)),
)
def test_known_circle_is_gone(members: frozenset[str]) -> None:
    """Each known circle, until it is broken (then this passes, which strict xfail turns into a
    failure: remove it from ``KNOWN_CIRCLES``)."""
    found, files = _circles_found()
    still = [c for c in found if frozenset(a.src for a in c) == members]
    assert not still, _circle_text(still[0], files)


def test_no_upward_import() -> None:
    arrows, files, modules = _package()
    names = [name for name, _ in LAYERS]
    found = [
        f"{_describe(a, files)}: {names[layer_of(a.src)]} may not import {names[layer_of(a.dst)]}"
        for a in upward([a for a in arrows if a.dst in modules])
    ]
    assert not found, (
        "imports that point up (layers, low to high: "
        + " < ".join(names)
        + "):\n"
        + "\n".join(found)
    )


def test_no_banned_library() -> None:
    arrows, files, _ = _package()
    found = [_describe(a, files) for a in banned(arrows)]
    rules = "; ".join(f"{k}: no {', '.join(v)}" for k, v in BANNED.items())
    assert not found, f"banned imports ({rules}):\n" + "\n".join(found)


# ---- the checker itself, on small made-up packages: each rule can fail ----
_TOY_LAYERS = (("low", ("toy.low",)), ("high", ("toy.high",)))


def _toy(**modules: str) -> tuple[list[Import], set[str]]:
    sources = {name.replace("__", "."): text for name, text in modules.items()}
    return imports(sources, {"toy", "toy.low", "toy.high"} & set(sources)), set(sources)


def test_checker_finds_a_circle_at_every_level() -> None:
    arrows, mods = _toy(
        toy__low__a="import toy.low.b\n",
        toy__low__b=(
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from toy.low.c import X\n"
        ),
        toy__low__c="def f():\n    from toy.low import a\n",
        toy__low__d="import toy.low.a\n",  # into the circle, not in it
    )
    [circle] = circles(arrows, mods)
    assert {(a.src, a.dst, a.where) for a in circle} == {
        ("toy.low.a", "toy.low.b", "module level"),
        ("toy.low.b", "toy.low.c", "TYPE_CHECKING"),
        ("toy.low.c", "toy.low.a", "function level"),
    }
    assert [a.line for a in circle] == [1, 3, 2]
    arrows, mods = _toy(toy__low__a="import toy.low.b\n", toy__low__b="import os\n")
    assert circles(arrows, mods) == []


def test_checker_finds_an_upward_import() -> None:
    arrows, mods = _toy(
        toy__low__a="def f():\n    from toy.high.b import g\n",
        toy__low__c="from . import a\n",  # relative, same layer: fine
        toy__high__b="from toy.low import a\nfrom ..low.c import *\n",  # down: fine
    )
    arrows = [a for a in arrows if a.dst in mods]
    assert {(a.src, a.dst) for a in arrows} == {
        ("toy.low.a", "toy.high.b"),
        ("toy.low.c", "toy.low.a"),
        ("toy.high.b", "toy.low.a"),
        ("toy.high.b", "toy.low.c"),
    }
    [up] = upward(arrows, _TOY_LAYERS)
    assert (up.src, up.dst, up.line, up.where) == ("toy.low.a", "toy.high.b", 2, "function level")


def test_checker_finds_a_banned_library_at_any_level() -> None:
    arrows, _ = _toy(
        toy__low__a="import numpy\ndef f():\n    import ray.tune\n",
        toy__low__b="if TYPE_CHECKING:\n    from duckdb import X\n",
        toy__high__c="import ray\n",
    )
    rules = {"toy.low": ("ray", "duckdb")}
    found = {(a.src, a.dst, a.where) for a in banned(arrows, rules)}
    assert found == {
        ("toy.low.a", "ray.tune", "function level"),
        ("toy.low.b", "duckdb", "TYPE_CHECKING"),
    }


def test_checker_places_modules_by_their_longest_prefix() -> None:
    assert layer_of("hamsweep.core.datasets") < layer_of("hamsweep.spec.trial")
    assert layer_of("hamsweep.spec.trial") < layer_of("hamsweep.core.data")
    assert layer_of("hamsweep.results.tables") < layer_of("hamsweep.sweep.dashboard")
    assert layer_of("hamsweep") == layer_of("hamsweep.cli")
    assert layer_of("hamsweep.new_module") is None  # ROOT is no catch-all
    assert layer_of("hamsweepish") is None


@pytest.mark.parametrize("where", ["module level", "function level", "TYPE_CHECKING"])
def test_checker_sees_each_place_an_import_stands(where: str) -> None:
    body = {
        "module level": "import toy.low.b\n",
        "function level": "class A:\n    def f(self):\n        import toy.low.b\n",
        "TYPE_CHECKING": (
            "import typing\nif typing.TYPE_CHECKING:\n    import toy.low.b\nelse:\n    pass\n"
        ),
    }[where]
    arrows, _ = _toy(toy__low__a=body, toy__low__b="")
    assert [(a.dst, a.where) for a in arrows if a.dst.startswith("toy")] == [("toy.low.b", where)]
