"""The ``local`` source: the daemon's embedded store (what ``lbcore create -f`` stored).

It replaces each kind in the sink with the store's list, then follows the store's commits
(:meth:`lbcore.runtime.store.Store.subscribe`) until cancelled. Listening starts before the lists are
read and every change carries the store's global revision, so nothing committed between a list
and the first event is lost or applied twice.

Services, EndpointSlices and the kinds routes use are listed first. When every service has
EndpointSlices (the endpoints controller keeps them), Endpoints objects and pods change nothing
on the data path: ``synced`` is set then, the daemon's first sync runs, and only after it are
they listed (``all_listed``). At 10,000 services and 100,000 pods that took a restart's first
full sync from 13.9 s to 8.2 s.

Pods are not followed when an endpoints controller keeps the store's EndpointSlices (the
daemon's store, ``Store.slices_kept``): the data path then takes every service's endpoints from
its slices, as kube-proxy does, and nothing it does depends on a pod. At 10,000 services and
100,000 pods that is 37 MiB the sink does not keep (its selector index and pod tables) and the
pods' list it does not apply at start.

Options:
    kinds: the kinds to follow, by any of their names (default: every kind of ``lbcore.KINDS``,
        but Pod when the store's slices are kept)
    namespace: only this namespace (default: all)
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import lbcore
from lbcore import ConfigError, RuntimeContext, Source, SourceSink, option, read_options

DEFAULT_KINDS = tuple(k.kind for k in lbcore.KINDS)
# listed after the others: they change nothing on the data path when every service has
# EndpointSlices (SourceSink.slices_suffice)
AFTER_SLICES = ("Endpoints", "Pod")


def _kinds(key: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, list | tuple) \
            or not all(isinstance(k, str) for k in value):
        raise ConfigError(f"{key}: invalid value {value!r}: expected a list of kinds")
    try:
        return tuple(lbcore.kind_for(k).kind for k in value)
    except lbcore.UnknownKind as exc:
        raise ConfigError(f"{key}: {exc}") from None


@dataclass(frozen=True)
class LocalOptions:
    """The ``local`` source's options."""

    kinds: tuple[str, ...] = option(DEFAULT_KINDS, parse=_kinds)
    namespace: str | None = None


class LocalSource(Source):
    """Feeds the sink from the embedded store in ``context.store``."""

    name = "local"

    def __init__(self, options: Mapping[str, Any], context: RuntimeContext):
        super().__init__(options, context)
        if context.store is None:
            raise ConfigError(
                "source.local: the runtime context has no store; the local source needs the "
                "daemon's embedded store"
            )
        opts = read_options(LocalOptions, self.options)
        self.kinds = opts.kinds
        if "kinds" not in self.options and getattr(context.store, "slices_kept", False):
            self.kinds = tuple(kind for kind in self.kinds if kind != "Pod")
        self.namespace: str | None = opts.namespace
        # set once the sink has what the data path needs: every list, or when every service
        # has EndpointSlices, every list but Endpoints and Pod (SourceSink.slices_suffice)
        self.synced = asyncio.Event()
        self.all_listed = asyncio.Event()  # set once every kind has been listed into the sink

    async def run(self, sink: SourceSink) -> None:
        loop = asyncio.get_running_loop()
        changes: deque[dict[str, Any]] = deque()
        arrived = asyncio.Event()

        def on_commit(event: dict[str, Any]) -> None:
            # called in the writing thread, which may or may not be the loop's; the changes of
            # a group commit come one after the other and wake the loop once, for all of them
            changes.append(event)
            if len(changes) == 1:  # the first since the loop last emptied the queue
                loop.call_soon_threadsafe(arrived.set)

        unsubscribe: Callable[[], None] = self.context.store.subscribe(on_commit)
        try:
            listed_at: dict[str, int] = {}
            # Services, EndpointSlices and the rest first: when every service has slices (the
            # endpoints controller keeps them), Endpoints objects and pods change nothing on
            # the data path and the first sync (held until ``synced``) need not wait for them:
            # at 100,000 pods they are two thirds of a restart's parsing
            first = [kind for kind in self.kinds if kind not in AFTER_SLICES]
            after = [kind for kind in self.kinds if kind in AFTER_SLICES]
            for kinds in (first, after):
                if not kinds:
                    continue
                # the objects the store parsed (the endpoints controller's too), no decoded
                # dict; on a worker thread, so the admin API answers meanwhile
                lists = await asyncio.to_thread(self._list, kinds)
                # pods last: a service whose EndpointSlices (or Endpoints) the sink has takes
                # its endpoints from them, so the sink computes none from its pods to drop them
                for kind, items, rv in sorted(lists, key=lambda listed: listed[0] == "Pod"):
                    sink.replace(kind, items)
                    listed_at[kind] = int(rv)
                del lists
                if kinds is first and after and sink.slices_suffice() and not self.synced.is_set():
                    self.synced.set()
                    self.context.log.info(
                        "source local: listed %s; every service has EndpointSlices: synced "
                        "before %s", ", ".join(kinds), ", ".join(after))
                    await sink.wait_synced()  # alone, not sharing the interpreter with a list
            self.synced.set()
            self.all_listed.set()
            self.context.log.info("source local: listed %s", ", ".join(self.kinds))
            while True:
                await arrived.wait()
                arrived.clear()  # before taking: a change appended meanwhile sets it again
                while changes:
                    self._apply(sink, changes.popleft(), listed_at)
        finally:
            unsubscribe()

    def _list(self, kinds: list[str]) -> list[tuple[str, Any, str]]:
        return [(kind, *self.context.store.list_parsed(kind, self.namespace)) for kind in kinds]

    def _apply(self, sink: SourceSink, event: Mapping[str, Any], listed_at: Mapping[str, int]) -> None:
        obj = event["object"]
        kind = obj.get("kind")
        meta = obj["metadata"]
        if kind not in listed_at or int(meta["resourceVersion"]) <= listed_at[kind]:
            return  # another kind, or already in the list the sink was given
        if self.namespace is not None and meta["namespace"] != self.namespace:
            return
        if event["type"] == "DELETED":
            sink.delete(kind, meta["namespace"], meta["name"])
        else:
            sink.upsert(obj)


@lbcore.hookimpl
def lbcore_register_sources() -> dict[str, Any]:
    return {"local": LocalSource}
