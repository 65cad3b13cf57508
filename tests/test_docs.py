"""The documentation keeps step with the code: every hook, config key and CLI command."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pluggy
import pytest

from lbcore import hookspecs
from lbcore.cli.main import build_parser
from lbcore.runtime.config import KEYS

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _hook_headings() -> dict[str, str]:
    """hook name -> the signature written in its ``### name(...)`` heading."""
    text = (DOCS / "plugins.md").read_text()
    return {m.group(1): m.group(0)[4:].strip() for m in re.finditer(r"^### (\w+)\(.*$", text, re.M)}


def _signature(hook: str) -> str:
    sig = inspect.signature(getattr(hookspecs, hook), eval_str=False)
    params = ", ".join(
        f"{p.name}: {p.annotation}" if p.annotation is not inspect.Parameter.empty else p.name
        for p in sig.parameters.values()
    )
    return f"{hook}({params}) -> {sig.return_annotation}"


def _hooks() -> list[str]:
    pm = pluggy.PluginManager("lbcore")
    pm.add_hookspecs(hookspecs)
    return sorted(name for name in dir(pm.hook) if name.startswith("lbcore_"))


HOOKS = _hooks()


def test_there_are_hooks_to_document():
    assert {"lbcore_register_frontends", "lbcore_sync_done"} <= set(HOOKS)


@pytest.mark.parametrize("hook", HOOKS)
def test_plugin_hooks_are_documented_with_their_exact_signature(hook):
    headings = _hook_headings()
    assert hook in headings, f"docs/plugins.md has no '### {hook}(...)' heading"
    assert headings[hook] == _signature(hook)


def test_plugins_doc_documents_no_hook_that_does_not_exist():
    assert set(_hook_headings()) <= set(HOOKS)


@pytest.mark.parametrize("key", KEYS)
def test_config_keys_are_documented_in_the_user_guide(key):
    assert f"`{key}`" in (DOCS / "user-guide.md").read_text()


def _commands() -> list[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return sorted(sub.choices)


@pytest.mark.parametrize("command", _commands())
def test_cli_commands_are_documented_in_the_user_guide(command):
    assert f"lbcore {command}" in (DOCS / "user-guide.md").read_text()


def test_architecture_doc_names_only_modules_that_exist():
    root = DOCS.parent
    text = (DOCS / "architecture.md").read_text()
    for path in set(re.findall(r"`((?:lbcore|plugins)/[\w/]+\.(?:py|pyx))`", text)):
        assert (root / path).exists(), f"docs/architecture.md names {path}, which does not exist"
