"""Fingerprints of the code a result depends on, so a resumable step reruns when code it runs changes, not on any edit.

The fingerprint covers the named modules and, found statically with `ast`, every module of the package they
import (also inside functions; a package's `__init__` only where it is itself imported; a registry package whose
`__init__` collects its modules with `pkgutil`, such as the families and the criteria, stands for all of them).
Each module counts as its syntax tree without docstrings, so comment, docstring and layout edits keep it; only
Python sources count.
"""
from __future__ import annotations

import ast
import hashlib
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parent


def code_fingerprint(names: Iterable[str], root: Path = PACKAGE_ROOT) -> str:
    """Hash of the modules `names` (a package name stands for every module in it) and of all they import from the
    package at `root`; each file is read once per process, so every step of a run is keyed by the same code."""
    return _fingerprint(Path(root).resolve(), tuple(sorted(set(names))))


def module_closure(names: Iterable[str], root: Path = PACKAGE_ROOT) -> list[str]:
    """Sorted names of the modules `code_fingerprint(names, root)` hashes."""
    return list(_closure(Path(root).resolve(), tuple(sorted(set(names)))))


@lru_cache(maxsize=None)
def _fingerprint(root: Path, names: tuple[str, ...]) -> str:
    """`code_fingerprint` of sorted, distinct names, memoised."""
    index = _index(root)
    h = hashlib.blake2b(digest_size=8)
    for name in _closure(root, names):
        h.update(f"{name}\0{_module(index[name], name)[0]}\n".encode())
    return h.hexdigest()


@lru_cache(maxsize=None)
def _closure(root: Path, names: tuple[str, ...]) -> tuple[str, ...]:
    """The modules `names` stand for, and transitively every module of the package they import."""
    index = _index(root)
    unknown = [n for n in names if n not in index]
    if unknown:
        raise ValueError(f"no module {', '.join(unknown)} in the package at {root}")
    todo = [m for n in names for m in index if m == n or m.startswith(n + ".")]
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        imports = _module(index[name], name)[1]
        if index[name].name == "__init__.py" and any(base == "pkgutil" for base, _ in imports):
            todo.extend(m for m in index if m.rpartition(".")[0] == name)  # a registry: every module it collects
        for base, members in imports:
            submodules = [m for m in (f"{base}.{member}" for member in members) if m in index]
            todo.extend(submodules)
            if base in index and (not members or len(submodules) < len(members)):  # `import base`, or names it defines
                todo.append(base)
    return tuple(sorted(seen))


@lru_cache(maxsize=None)
def _index(root: Path) -> dict[str, Path]:
    """Module name -> source file of every Python module in the package at `root`."""
    index = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        index[".".join((root.name, *(parts[:-1] if parts[-1] == "__init__" else parts)))] = path
    return index


@lru_cache(maxsize=None)
def _module(path: Path, name: str) -> tuple[str, frozenset[tuple[str, tuple[str, ...]]]]:
    """The digest of module `name`'s syntax tree without docstrings, and its imports as (absolute module, names
    imported from it), relative ones resolved."""
    tree = ast.parse(path.read_bytes(), filename=str(path))
    package = (name if path.name == "__init__.py" else name.rpartition(".")[0]).split(".")
    imports: set[tuple[str, tuple[str, ...]]] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imports.update((alias.name, ()) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            parts = package[:len(package) - node.level + 1] if node.level else []
            base = ".".join([*parts, *([node.module] if node.module else [])])
            imports.add((base, tuple(alias.name for alias in node.names)))
        for field in ("body", "orelse", "finalbody"):
            body = getattr(node, field, None)
            if isinstance(body, list):
                setattr(node, field, [s for s in body if not _is_string_statement(s)])
    return hashlib.blake2b(ast.dump(tree).encode(), digest_size=8).hexdigest(), frozenset(imports)


def _is_string_statement(node: ast.AST) -> bool:
    """A bare string statement (a docstring): it changes no result."""
    return isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
