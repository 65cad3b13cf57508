"""Imports run downward only: cli -> runtime -> model -> core, and plugins use lbcore's public face.

The layers are the folders of ``lbcore/``. A module may import its own layer and the ones below
it, and the few modules beside the layers that import no layer at run time (``errors``,
``hookspecs``, ``plugins``: errors and the plugin manager, used by every layer). The built-in
plugins import only ``lbcore`` itself (the names in ``lbcore.__all__``), ``lbcore.balancers``
and, from compiled code, the core's C declarations (``cimport lbcore.core...``), as a
third-party plugin would. Imports under ``if TYPE_CHECKING:`` are not run and do not count.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import lbcore

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ["core", "model", "runtime", "cli"]
# beside the layers: import no layer at run time, and every layer may import them
BASE = {"lbcore.errors", "lbcore.hookspecs", "lbcore.plugins"}
# the public face: imports every layer, lazily; no layer imports it
FACADE = {"lbcore", "lbcore.balancers", "lbcore.__main__"}


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[0] == "plugins":
        parts = parts[1:]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def layer_of(module: str) -> int | None:
    """The rank of ``module``'s layer (core 0 .. cli 3); -1 for the base modules beside them."""
    if module in BASE:
        return -1
    parts = module.split(".")
    if parts[0] == "lbcore" and len(parts) > 1 and parts[1] in LAYERS:
        return LAYERS.index(parts[1])
    return None


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def imports_of(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, module, names) of every import that runs; Cython files are read line by line."""
    text = path.read_text()
    found: list[tuple[int, str, list[str]]] = []
    if path.suffix == ".py":
        tree = ast.parse(text)
        skip = _type_checking_lines(tree)
        for node in ast.walk(tree):
            if getattr(node, "lineno", None) in skip:
                continue
            if isinstance(node, ast.Import):
                found += [(node.lineno, a.name, []) for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.append((node.lineno, node.module, [a.name for a in node.names]))
        return found
    for no, line in enumerate(text.splitlines(), 1):
        m = re.match(r"\s*from\s+([\w.]+)\s+c?import\s+\(?\s*([\w, ]*)", line)
        if m:
            found.append((no, m.group(1), [n.strip() for n in m.group(2).split(",") if n.strip()]))
            continue
        m = re.match(r"\s*c?import\s+([\w.]+)", line)
        if m:
            found.append((no, m.group(1), []))
    return found


def targets(module: str, names: list[str]) -> list[str]:
    """The modules an import reaches: ``from lbcore.model import objects`` reaches the module."""
    out = [module]
    for name in names:
        full = f"{module}.{name}"
        if layer_of(full) is not None and full.count(".") >= 2 or full in BASE | FACADE:
            out.append(full)
    return out


SOURCES = [p for p in sorted((ROOT / "lbcore").rglob("*")) if p.suffix in (".py", ".pyx", ".pxd")]
PLUGIN_SOURCES = [
    p for p in sorted((ROOT / "plugins").rglob("*")) if p.suffix in (".py", ".pyx", ".pxd", ".pxi")
]


def test_every_module_of_lbcore_is_in_a_layer_or_named_beside_them():
    for path in SOURCES:
        name = module_name(path)
        assert layer_of(name) is not None or name in FACADE, (
            f"{path.relative_to(ROOT)} is in no layer: move it under lbcore/{{{','.join(LAYERS)}}}/"
        )


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_run_downward_only(path: Path):
    here = module_name(path)
    rank = layer_of(here)
    if rank is None:  # the facade may import anything
        return
    for line, module, names in imports_of(path):
        if module == "lbcore":
            bad = [n for n in names if n != "__version__" and f"lbcore.{n}" not in BASE]
            assert not bad, (
                f"{path.relative_to(ROOT)}:{line} imports {bad} from the lbcore facade; "
                "import the defining module of a lower layer instead"
            )
            continue
        for target in targets(module, names):
            if not target.startswith("lbcore"):
                continue
            assert target not in FACADE, f"{path.relative_to(ROOT)}:{line} imports the facade {target}"
            to = layer_of(target)
            assert to is not None, f"{path.relative_to(ROOT)}:{line} imports {target}, in no layer"
            assert to <= rank, (
                f"{path.relative_to(ROOT)}:{line}: {here} ({LAYERS[rank] if rank >= 0 else 'base'}) "
                f"imports {target} ({LAYERS[to]}), which is above it"
            )


@pytest.mark.parametrize("path", PLUGIN_SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_plugins_use_only_the_public_face(path: Path):
    public = set(lbcore.__all__)
    for line, module, names in imports_of(path):
        where = f"{path.relative_to(ROOT)}:{line}"
        if module == "lbcore":
            unknown = sorted(set(names) - public)
            assert not unknown, f"{where} imports {unknown}, which lbcore does not export"
        elif module.startswith("lbcore.core.") and path.suffix != ".py":
            # compiled plugins reach the core's C declarations (.pxd), documented in plugins.md
            assert (ROOT / (module.replace(".", "/") + ".pxd")).exists(), f"{where}: {module}"
        elif module.startswith("lbcore."):
            assert module == "lbcore.balancers", f"{where} imports {module}; use `from lbcore import ...`"


def test_the_layers_are_checked_by_this_test_and_not_vacuously():
    """A downward import is seen (so the parser reads imports at all)."""
    seen = {t for p in SOURCES for _, m, n in imports_of(p) for t in targets(m, n)}
    assert "lbcore.core._selectors" in seen and "lbcore.model.objects" in seen
