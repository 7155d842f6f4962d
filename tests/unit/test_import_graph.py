"""The package's import graph: no cycle between modules nor between subpackages, and train/ without Ray.

Every import counts, including those inside functions and relative ones: a lazy import still ties the
two modules together (STYLE.md: imports flow one way, spec -> store -> data -> models -> train -> tune ...).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import tl_ray

ROOT = Path(tl_ray.__file__).resolve().parent
PKG = ROOT.name


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, a package named by its ``__init__``."""
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = [PKG, *path.relative_to(ROOT).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imported(name: str, path: Path) -> set[str]:
    """Every module name ``name`` imports, anywhere in the file (tl_ray's and others, e.g. ``ray.tune``)."""
    is_package = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the module's package, one level up per extra dot
                base = name.split(".")[: len(name.split(".")) - node.level + is_package]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            out.add(module)
            out |= {f"{module}.{alias.name}" for alias in node.names}  # names that are submodules
    return out


def _known(dotted: str) -> str | None:
    """The longest prefix of ``dotted`` that is a module of the package."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        if ".".join(parts[:i]) in MODULES:
            return ".".join(parts[:i])
    return None


def _subpackage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _graphs() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    modules: dict[str, set[str]] = {m: set() for m in MODULES}
    packages: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        for dep in filter(None, map(_known, _imported(name, path))):
            # The package itself, and a module's own parent packages, are imported on the way to it.
            if dep == PKG or dep == name or name.startswith(dep + "."):
                continue
            modules[name].add(dep)
            if _subpackage(dep) != _subpackage(name):
                packages.setdefault(_subpackage(name), set()).add(_subpackage(dep))
                packages.setdefault(_subpackage(dep), set())
    return modules, packages


def cycles(graph: dict[str, set[str]]) -> list[str]:
    """A cycle, as ``a -> b -> a``, for every edge a depth-first search finds going back up its path.

    Every group of nodes that import one another shows in at least one of them.
    """
    found, done, path = [], set(), []

    def visit(node: str) -> None:
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt in path:
                found.append(" -> ".join([*path[path.index(nxt):], nxt]))
            elif nxt not in done:
                visit(nxt)
        path.pop()
        done.add(node)

    for node in sorted(graph):
        if node not in done:
            visit(node)
    return found


def test_cycles_are_found_and_named():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a -> b -> c -> a"]
    assert cycles({"a": {"b"}, "b": set()}) == []
    assert "tl_ray.spec.load" in MODULES and "tl_ray.spec" in MODULES
    modules, packages = _graphs()
    assert "tl_ray.spec.experiment" in modules["tl_ray.spec.load"] and "spec" in packages["models"]


def test_no_module_cycles():
    found = cycles(_graphs()[0])
    assert not found, "modules import one another:\n  " + "\n  ".join(found)


def test_no_subpackage_cycles():
    found = cycles(_graphs()[1])
    assert not found, "subpackages import one another:\n  " + "\n  ".join(found)


def test_train_imports_no_ray():
    offenders = sorted(
        f"{name} imports {dep}"
        for name, path in MODULES.items() if name.startswith(f"{PKG}.train.")
        for dep in _imported(name, path) if dep == "ray" or dep.startswith("ray.")
    )
    assert not offenders, "train/ is TensorFlow only, without Ray:\n  " + "\n  ".join(offenders)
