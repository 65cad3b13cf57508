"""Hook specifications: the reference for plugin authors.

A plugin is a module or object with functions marked ``@lbcore.hookimpl`` whose names match the
hooks below. lbcore finds plugins through the ``lbcore`` entry-point group; its own sources and
frontends (``lbcore_plugins.*``) are loaded the same way. docs/plugins.md documents each hook and
a test keeps it in step with this module.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from lbcore.model.snapshot import Snapshot

hookspec = pluggy.HookspecMarker("lbcore")
hookimpl = pluggy.HookimplMarker("lbcore")


# ---------------------------------------------------------------------------------------------
# Registration: each plugin tells which named parts it provides. Config selects them by name.
# ---------------------------------------------------------------------------------------------


@hookspec
def lbcore_register_sources() -> Mapping[str, Callable[..., Any]]:
    """Name the sources this plugin provides.

    Called once when the daemon loads its configuration, before any source starts.

    :return: ``{name: factory}``; ``factory(options, context)`` builds a
        :class:`lbcore.runtime.interfaces.Source`. ``options`` is the source's mapping from the config
        file, ``context`` the :class:`lbcore.runtime.interfaces.RuntimeContext`.
    """


@hookspec
def lbcore_register_frontends() -> Mapping[str, Callable[..., Any]]:
    """Name the frontends this plugin provides.

    Called once when the daemon loads its configuration, before any frontend starts.

    :return: ``{name: factory}``; ``factory(options, context)`` builds a
        :class:`lbcore.runtime.interfaces.Frontend`.
    """


@hookspec
def lbcore_register_balancers() -> Mapping[str, Callable[..., Any]]:
    """Name the balancing algorithms this plugin provides.

    Called the first time :func:`lbcore.core.balancers.create` or :func:`lbcore.core.balancers.available`
    needs the list of algorithms.

    :return: ``{name: factory}``; ``factory(backends, weights=None, **options)`` returns an object
        with the interface of :class:`lbcore.core.balancers.Balancer` (``pick``, ``pick_many``,
        ``update``, ``acquire``, ``release``).
    """


# ---------------------------------------------------------------------------------------------
# Observation
# ---------------------------------------------------------------------------------------------


@hookspec
def lbcore_sync_done(
    snapshot: Snapshot, changed: frozenset[str], duration: float, errors: Mapping[str, str]
) -> None:
    """Observe a finished sync.

    Called by the daemon after every frontend has been given a snapshot.

    :param snapshot: the :class:`lbcore.model.snapshot.Snapshot` that was applied.
    :param changed: ``namespace/name`` of the services that changed since the previous sync.
    :param duration: seconds the sync took, all frontends included.
    :param errors: frontend name -> error message, for the frontends whose sync failed.
    """
