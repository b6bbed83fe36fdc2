# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""The package boundaries of ``scripts/``: no import circles, no upward imports, at most six floors of imports,
transforms only in transforms.

Every ``import`` statement counts, at module level and inside functions, so a circle hidden in a function
body is found too. The layers, lowest first, are those of docs/reference.md ("Code layout"). The floors are the
longest chain of imports between modules, counted with the package ``__init__`` files that Python runs on the
way (importing ``scripts.io.xray`` from outside ``scripts.io`` also runs ``scripts/io/__init__.py`` and
everything that imports).
"""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "scripts"

#: lowest first; a module may import modules of its own layer or below, never above.
LAYERS: list[tuple[str, ...]] = [
    ("scripts", "scripts.errors", "scripts.utils"),
    ("scripts.functional", "scripts.drr", "scripts.data", "scripts.networks"),
    ("scripts.io",),
    ("scripts.transforms",),
    ("scripts.losses", "scripts.metrics", "scripts.handlers", "scripts.finder"),
    (
        "scripts.workflow",
        "scripts.prepare",
        "scripts.simulate",
        "scripts.spine",
        "scripts.convert_model",
        "scripts.localise",
    ),
    ("scripts.tools", "scripts.monailabel"),
]


def _modules() -> dict[str, Path]:
    mods = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        mods[name] = path
    return mods


def import_graph() -> dict[str, set[str]]:
    """``module -> {bundle modules it imports}``, from every import statement of every module."""
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                names = [target] + [f"{target}.{a.name}" for a in node.names]
            else:
                continue
            for name in names:
                while name not in mods and "." in name:
                    name = name.rpartition(".")[0]
                if name in mods and name != mod and name.startswith("scripts"):
                    graph[mod].add(name)
    return graph


#: the most modules in one chain of imports (package ``__init__`` files included)
MAX_CHAIN = 6


def with_package_inits(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """``graph`` plus the package ``__init__`` modules each import runs: a module that imports ``a.b.c`` from
    outside package ``a.b`` also runs ``a/b/__init__.py`` (and ``a/__init__.py`` from outside ``a``)."""
    full = {m: set(targets) for m, targets in graph.items()}
    for mod, targets in graph.items():
        for target in targets:
            parts = target.split(".")
            for i in range(1, len(parts)):
                package = ".".join(parts[:i])
                if package in graph and package != mod and not mod.startswith(package + "."):
                    full[mod].add(package)
    return full


def longest_chain(graph: dict[str, set[str]]) -> list[str]:
    """The longest chain of imports ``[importer, imported, ...]`` of an acyclic ``graph`` (ties: by name)."""
    best: dict[str, list[str]] = {}

    def chain(module: str, path: tuple[str, ...]) -> list[str]:
        if module in path:
            raise AssertionError(f"import circle: {' -> '.join(path + (module,))}")
        if module not in best:
            tails = [chain(t, path + (module,)) for t in sorted(graph[module])]
            best[module] = [module] + max(tails, key=len, default=[])
        return best[module]

    return max((chain(m, ()) for m in sorted(graph)), key=len, default=[])


def layer_of(module: str) -> int:
    """Index in :data:`LAYERS` of the longest prefix naming ``module``'s layer."""
    best, best_len = None, -1
    for i, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > best_len:
                best, best_len = i, len(name)
    if best is None:
        raise AssertionError(f"{module} has no layer: add it to LAYERS and to docs/README.md")
    return best


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_graph_sees_function_level_imports():
    graph = import_graph()
    # scripts.tools.benchmark imports the DRR and network benchmarks inside its commands only
    assert {"scripts.tools.drr_speed", "scripts.tools.network_speed"} <= graph["scripts.tools.benchmark"]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]


def test_no_import_circles():
    assert _cycles(import_graph()) == []


def test_the_chain_counts_package_inits():
    full = with_package_inits(import_graph())
    # scripts.handlers imports scripts.networks.model_info, which runs scripts/networks/__init__.py first
    assert "scripts.networks" in full["scripts.handlers"]
    assert "scripts.networks" not in full["scripts.networks.ear"]  # its own package: already running
    graph = {"a": {"b.c"}, "b": {"b.d"}, "b.c": set(), "b.d": {"e"}, "e": set()}
    assert with_package_inits(graph)["a"] == {"b.c", "b"}
    assert longest_chain(with_package_inits(graph)) == ["a", "b", "b.d", "e"]


def test_at_most_six_floors():
    chain = longest_chain(with_package_inits(import_graph()))
    assert len(chain) <= MAX_CHAIN, f"{len(chain)} modules: {' -> '.join(chain)}"


def test_no_upward_imports():
    upward = [
        f"{m} (layer {layer_of(m)}) imports {t} (layer {layer_of(t)})"
        for m, targets in import_graph().items()
        for t in sorted(targets)
        if layer_of(t) > layer_of(m)
    ]
    assert upward == []


@pytest.mark.parametrize("module", sorted(m for m in _modules() if m.startswith("scripts.transforms.")))
def test_transforms_hold_transforms_only(module):
    from monai.transforms import Transform

    mod = importlib.import_module(module)
    for name in mod.__all__:
        obj = getattr(mod, name)
        if inspect.isclass(obj):
            assert issubclass(obj, Transform), f"{module}.{name} is a class but not a MONAI Transform"
        else:
            assert callable(obj) or name.isupper(), f"{module}.{name} is neither a function nor a constant"
    source = Path(mod.__file__).read_text()
    for library in ("nibabel", "PIL", "pydicom", "itk", "trimesh", "matplotlib", "skimage"):
        uses = f"import {library}" in source or f"from {library}" in source
        assert not uses, f"{module} reads or writes files with {library}: that belongs in scripts/io"
