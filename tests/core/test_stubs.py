"""The compiled modules' stubs and docstrings: every extension has a ``.pyi`` that mypy's stubtest
accepts against the built module, and every compiled class, method and public function says
what it does."""

from __future__ import annotations

import importlib
import inspect
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
ALLOWLIST = Path(__file__).with_name("stubtest_allowlist.txt")

# every .pyx is one extension module: lbcore/core/_x_c.pyx is lbcore.core._x_c, and the plugins'
# are imported as lbcore_plugins._y_c (the folder is the import name)
FOLDERS = {"lbcore.core": ROOT / "lbcore" / "core", "lbcore_plugins": ROOT / "plugins" / "lbcore_plugins"}
SOURCES = {f"{package}.{pyx.stem}": pyx
           for package, folder in FOLDERS.items() for pyx in folder.glob("_*_c.pyx")}
MODULES = sorted(SOURCES)

# the stubs' imports of pure-Python modules are followed silently: their own type errors are
# the mypy run's business (tests/test_sourcecode.py), not the stubs'
MYPY_CONFIG = "[mypy]\nignore_missing_imports = True\nfollow_imports = silent\n"


def test_every_extension_module_is_found():
    assert {"lbcore.core._balancers_c", "lbcore.core._hashing_c", "lbcore_plugins._proxy_c"} <= set(MODULES)


@pytest.mark.parametrize("module", MODULES)
def test_every_extension_has_a_stub_beside_it(module):
    assert SOURCES[module].with_suffix(".pyi").is_file()


@pytest.mark.compiled
def test_stubtest_accepts_every_stub(tmp_path):
    config = tmp_path / "mypy.ini"
    config.write_text(MYPY_CONFIG)
    result = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "--mypy-config-file", str(config),
         "--allowlist", str(ALLOWLIST), *MODULES],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _own_doc(obj: Any, name: str) -> str:
    """The docstring without the signature line ``embedsignature`` puts first."""
    lines = (inspect.getdoc(obj) or "").splitlines()
    if lines and re.match(rf"{re.escape(name)}\(.*\)", lines[0]):
        lines = lines[1:]
    return "\n".join(lines).strip()


def _compiled_callables(module: Any) -> list[tuple[str, Any]]:
    """The module's classes and public functions, and every method of its classes (dunders
    apart: they keep Python's meaning)."""
    found = []
    for name, obj in vars(module).items():
        if name.startswith("__") or getattr(obj, "__module__", None) != module.__name__:
            continue
        if inspect.isclass(obj):
            found.append((name, obj))
            for attr, member in vars(obj).items():
                if attr.startswith("__"):
                    continue
                if isinstance(member, (staticmethod, classmethod)):
                    member = member.__func__
                if callable(member) and not inspect.isclass(member):
                    found.append((f"{name}.{attr}", member))
        elif callable(obj) and not name.startswith("_"):
            found.append((name, obj))
    return found


@pytest.mark.compiled
@pytest.mark.parametrize("module", MODULES)
def test_every_compiled_class_and_function_has_a_docstring(module):
    compiled = importlib.import_module(module)
    found = _compiled_callables(compiled)  # none when a module serves only cimport
    missing = [name for name, obj in found if not _own_doc(obj, name.rpartition(".")[2])]
    assert missing == []
