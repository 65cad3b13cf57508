"""The one plugin manager: hook specifications plus every plugin found by entry point.

``LBCORE_LOAD_PLUGINS=a,b`` loads only the named entry points (empty: none);
``LBCORE_TRACE_PLUGINS=1`` prints every hook call to stderr.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from functools import cache
from typing import Any

import pluggy

from lbcore import hookspecs

ENTRY_POINT_GROUP = "lbcore"


@cache
def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, built on first use."""
    pm = pluggy.PluginManager("lbcore")
    pm.add_hookspecs(hookspecs)
    only = os.environ.get("LBCORE_LOAD_PLUGINS")
    if only is None:
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    else:
        for name in filter(None, (n.strip() for n in only.split(","))):
            pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP, name=name)
    if os.environ.get("LBCORE_TRACE_PLUGINS"):
        pm.trace.root.setwriter(lambda message: print(message, end="", file=sys.stderr))
        pm.enable_tracing()
    return pm


def registered(hook_name: str) -> dict[str, Callable[..., Any]]:
    """Merge the ``{name: factory}`` answers of a ``lbcore_register_*`` hook.

    Two plugins that claim the same name are an error: config could not say which one it means.
    """
    pm = get_plugin_manager()
    merged: dict[str, Callable[..., Any]] = {}
    owners: dict[str, str] = {}
    hook = getattr(pm.hook, hook_name)
    for impl in reversed(hook.get_hookimpls()):
        answer: Mapping[str, Callable[..., Any]] | None = impl.function()
        for name, factory in (answer or {}).items():
            if name in merged and merged[name] is not factory:
                raise RuntimeError(
                    f"{hook_name}: {name!r} is provided by both {owners[name]} and {impl.plugin_name}"
                )
            merged[name] = factory
            owners[name] = impl.plugin_name
    return merged
