"""ClusterState: the one writer between sources and frontends, and its sync loop.

Sources call :meth:`ClusterState.upsert`, :meth:`~ClusterState.delete` and
:meth:`~ClusterState.replace`; each updates the service model (a
:class:`lbcore.model.service_table.ServiceTable` that allocates nothing: addresses come from the
source) and asks for a sync. What a source gives was admitted already, by the embedded store or
by a Kubernetes API server, so it is only parsed (:func:`lbcore.model.objects.parse_admitted`),
never validated again: lbcore never drops what the server accepted. An object that cannot be
read at all is logged with its name, counted, and skipped; the others go on. The sync loop runs like kube-proxy's bounded-frequency runner: syncs
that carry a change are paid for from a bucket of ``burst_syncs`` tokens (2, as kube-proxy's
``burstSyncs``) that regains one token per ``min_sync_period``. A request runs at once while
the bucket holds a token, otherwise it waits for the next one, and every request made meanwhile
joins the same sync. So a change after a quiet moment never waits (even one that comes soon
after the previous sync), the syncs of a steady stream are ``min_sync_period`` apart on
average, and a burst of 1,000 events makes one sync. An event that changes no service (a pod
whose service takes its endpoints from EndpointSlices) asks for no sync, and a sync that hands
no frontend a change takes no token.

A sync takes one snapshot and gives it to every frontend with the services that changed since
that frontend's last successful sync. The frontends sync at the same time, each in a thread of its
own, so a sync takes as long as its slowest frontend rather than all of them one after the other
(at 10,000 services a full iptables restore takes 20 s, a whole nftables table 5 s); each
frontend is still called from one thread at a time. A frontend that raises is retried with exponential backoff
(1 s, 2 s, 4 s, ... up to a minute), gets a full sync when it recovers, is reported unhealthy in
:meth:`ClusterState.health`, and never stops the others.

Installed rules can vanish under a frontend: another tool runs ``iptables -t nat -F`` or
``nft delete table``, and syncs that only apply changes would never put them back.
:meth:`ClusterState.run_checks` therefore asks every frontend, each ``check_period``, whether its
canary is still there (:meth:`Frontend.check`); when it is not, the frontend is told to
:meth:`~Frontend.resync` and a sync runs at once. Until a check after that sync finds the rules
back, ``/readyz`` says "rules missing since T". Every ``resync_period`` each frontend rewrites
everything anyway, for changes a canary cannot show (kube-proxy's ``--iptables-sync-period``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from lbcore.errors import ValidationError
from lbcore.model.kinds import KINDS
from lbcore.model.objects import Object, parse_admitted
from lbcore.model.snapshot import Snapshot
from lbcore.runtime.interfaces import Frontend, SourceSink
from lbcore.runtime.logs import event

log = logging.getLogger("lbcore.runtime.state")


class SyncMetrics:
    """The Prometheus series of the sync loop, in their own registry (one per daemon)."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.syncs = Counter(
            "lbcore_syncs", "Syncs run (one snapshot to every frontend)", registry=r
        )
        self.sync_seconds = Histogram(
            "lbcore_sync_duration_seconds",
            "Time a sync took, all frontends included",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=r,
        )
        self.events = Counter(
            "lbcore_source_events", "Objects received from the source", ["kind", "op"], registry=r
        )
        self.rejected = Counter(
            "lbcore_source_rejected",
            "Objects from the source that could not be read at all (skipped)",
            ["kind"],
            registry=r,
        )
        self.services = Gauge(
            "lbcore_services", "Proxied services in the last snapshot", registry=r
        )
        self.service_ports = Gauge(
            "lbcore_service_ports", "Proxied service ports in the last snapshot", registry=r
        )
        self.endpoints = Gauge(
            "lbcore_endpoints", "Endpoints over every service port in the last snapshot", registry=r
        )
        self.frontend_failures = Counter(
            "lbcore_frontend_sync_failures", "Failed syncs per frontend", ["frontend"], registry=r
        )
        self.frontend_healthy = Gauge(
            "lbcore_frontend_healthy",
            "1 when the frontend's last sync worked",
            ["frontend"],
            registry=r,
        )
        self.rules_missing = Counter(
            "lbcore_frontend_rules_missing",
            "Times a check found the frontend's installed rules missing or changed",
            ["frontend"],
            registry=r,
        )
        self.rules_missing_now = Gauge(
            "lbcore_frontend_rules_missing_now",
            "1 from a check that found the rules missing until one finds them back",
            ["frontend"],
            registry=r,
        )
        self.resyncs = Counter(
            "lbcore_frontend_resyncs",
            "Full rewrites asked of a frontend: reason=missing (a check failed) or period",
            ["frontend", "reason"],
            registry=r,
        )


@dataclass
class FrontendHealth:
    """What /healthz shows of one frontend."""

    name: str
    healthy: bool = True
    synced: bool = False
    failures: int = 0  # consecutive
    last_error: str | None = None
    retry_at: float | None = None  # monotonic time of the next attempt while failing
    pending: set[str] = field(default_factory=set)  # changed services not yet applied
    rules_missing_since: float | None = None  # wall-clock time a check found the rules missing
    rules_problem: str | None = None  # what that check said

    @property
    def rules_missing(self) -> str | None:
        """"rules missing since T: what", while they are; else None."""
        if self.rules_missing_since is None:
            return None
        since = datetime.fromtimestamp(self.rules_missing_since, UTC).isoformat(timespec="seconds")
        return f"rules missing since {since.replace('+00:00', 'Z')}: {self.rules_problem}"

    def as_dict(self, now: float) -> dict[str, Any]:
        out: dict[str, Any] = {"healthy": self.healthy, "synced": self.synced}
        if self.rules_missing_since is not None:
            out["rules"] = self.rules_missing
        if not self.healthy:
            out["consecutive_failures"] = self.failures
            out["error"] = self.last_error
            if self.retry_at is not None:
                out["retry_in_seconds"] = round(max(0.0, self.retry_at - now), 3)
        return out


_KINDS = frozenset(k.kind for k in KINDS)


def _key(obj: Mapping[str, Any] | Object) -> tuple[str, str, str]:
    if isinstance(obj, Object):
        return obj.kind, obj.namespace or "default", obj.name
    meta = obj.get("metadata") or {}
    return str(obj.get("kind", "")), meta.get("namespace") or "default", str(meta.get("name", ""))


class ClusterState(SourceSink):
    """The service model fed by one source, synced to the frontends on a bounded frequency.

    :param table: a ``ServiceTable(..., allocate=False)``: it takes objects as admitted.
    :param frontends: name -> started :class:`~lbcore.runtime.interfaces.Frontend`.
    :param executor: where every frontend is called, one call at a time if it has one thread;
        None (the default): a thread per frontend, so that frontends sync at the same time.
    :param on_sync_done: called as ``lbcore_sync_done`` is, after every sync.
    :param parse: how an object is read (``parse_admitted``; the daemon over its embedded store
        gives ``Store.parse``, which shares one parse of each object version with the
        endpoints controller).
    :param listed: the source's ``synced`` event: :meth:`run` syncs nothing before it is set, so
        that no frontend is handed a table still filling (a first sync of an empty table would
        take away every rule a kernel frontend kept from the previous run). None: at once.
    """

    def __init__(
        self,
        table: Any,
        frontends: Mapping[str, Frontend],
        *,
        node_name: str = "localhost",
        node_addresses: tuple[str, ...] = (),
        min_sync_period: float = 0.2,
        burst_syncs: int = 2,
        backoff_initial: float = 1.0,
        backoff_max: float = 60.0,
        metrics: SyncMetrics | None = None,
        on_sync_done: Callable[..., Any] | None = None,
        executor: Executor | None = None,
        clock: Callable[[], float] = time.monotonic,
        check_period: float = 2.0,
        resync_period: float = 3600.0,
        parse: Callable[[Mapping[str, Any]], Any] = parse_admitted,
        listed: asyncio.Event | None = None,
    ):
        if getattr(table, "allocate", False):
            raise ValueError("ClusterState takes admitted objects: give it ServiceTable(allocate=False)")
        self.table = table
        self.frontends = dict(frontends)
        self.node_name = node_name
        self.node_addresses = tuple(node_addresses)
        self.min_sync_period = min_sync_period
        if burst_syncs < 1:
            raise ValueError(f"burst_syncs: {burst_syncs!r} must be at least 1")
        self.burst_syncs = burst_syncs
        self.check_period = check_period
        self.resync_period = resync_period
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.metrics = metrics or SyncMetrics()
        self.on_sync_done = on_sync_done
        # Each frontend is called from one thread at a time, never on the event loop's thread, so
        # a slow iptables-restore stalls neither the admin API nor the other frontends.
        self._executors: dict[str, Executor] = {
            name: executor or ThreadPoolExecutor(1, thread_name_prefix=f"lbcore-sync-{name}")
            for name in self.frontends
        }
        self._own_executors = executor is None
        self._clock = clock
        self._parse = parse
        self._listed = listed
        self._health = {name: FrontendHealth(name) for name in self.frontends}
        self._version = 0
        self._requested = asyncio.Event()
        self._syncing = False
        # the bucket the syncs that carry a change are paid from (see the module docstring)
        self._tokens = float(burst_syncs)
        self._tokens_at = clock()
        self.snapshot = Snapshot(node_name=node_name, node_addresses=self.node_addresses)
        self._endpoints_of: dict[str, int] = {}  # service -> its endpoints, as last recorded
        self._endpoint_total = 0
        self.syncs = 0
        self.events = 0
        self.synced_once = asyncio.Event()
        # the table's version the frontends reflect: the last sync that ended carried it, or
        # what came after it changed no service
        self.synced_version = 0

    # -- SourceSink -------------------------------------------------------------------------

    def upsert(self, obj: Mapping[str, Any] | Object) -> None:
        kind, namespace, name = _key(obj)
        if kind not in _KINDS:
            return
        self.metrics.events.labels(kind, "upsert").inc()
        self._upsert(obj, kind, namespace, name)

    def _upsert(self, obj: Mapping[str, Any] | Object, kind: str, namespace: str,
                name: str) -> None:
        if isinstance(obj, Object):  # parsed already (the embedded store's list_parsed)
            version = obj.resource_version
        else:
            version = str((obj.get("metadata") or {}).get("resourceVersion") or "")
        if version:
            # the table's object knows the version it was parsed at (no second table of them)
            held = self.table.get(kind, namespace, name)
            if held is not None and held.resource_version == version:
                return  # the same version again (a relist): nothing changed
        try:
            parsed = obj if isinstance(obj, Object) else self._parse(obj)
        except ValidationError as exc:  # one unreadable object must not stop the source
            self.metrics.rejected.labels(kind).inc()
            event(
                log,
                f"{kind} {namespace}/{name} skipped: it cannot be read",
                logging.WARNING,
                kind=kind,
                object=f"{namespace}/{name}",
                error=str(exc),
            )
            return
        self.table.apply(parsed)
        self._changed()

    def delete(self, kind: str, namespace: str, name: str) -> None:
        if kind not in _KINDS:
            return
        self.metrics.events.labels(kind, "delete").inc()
        if self.table.delete(kind, namespace, name) is None:
            return
        self._changed()

    def replace(self, kind: str, objects: Sequence[Mapping[str, Any] | Object]) -> None:
        if kind not in _KINDS:
            return
        keys = [_key(o) for o in objects]
        keep = {(namespace, name) for _, namespace, name in keys}
        held = {(o.namespace, o.name) for o in self.table.list(kind)}
        for namespace, name in sorted(held - keep):
            self.delete(kind, namespace, name)
        # counted once for the list (a label lookup per object was a tenth of a restart's
        # replace at 100,000 pods)
        listed = 0
        for obj, key in zip(objects, keys, strict=True):
            if key[0] == kind:
                listed += 1
                self._upsert(obj, *key)
            else:
                self.upsert(obj)
        self.metrics.events.labels(kind, "upsert").inc(listed)
        self._changed()

    def slices_suffice(self) -> bool:
        return not self.table.services_without_slices()

    async def wait_synced(self) -> None:
        version = self.table.version
        while self.synced_version < version:
            await asyncio.sleep(0.05)

    def _changed(self) -> None:
        self.events += 1
        # an object that changed no service's ports or endpoints (a pod of a service whose
        # endpoints come from EndpointSlices: the slice follows) asks for no sync, so it does
        # not start the min_sync_period clock ahead of the change that matters
        if self.table.changed_since(self._version) or not self.synced_once.is_set():
            self.request_sync()
        elif not self.busy:  # the frontends have what this changes: nothing
            self.synced_version = self.table.version

    # -- the loop -------------------------------------------------------------------------

    def request_sync(self) -> None:
        """Ask for a sync; requests before it starts share it."""
        self._requested.set()

    @property
    def busy(self) -> bool:
        """Whether a sync is asked for or running."""
        return self._requested.is_set() or self._syncing

    async def run(self) -> None:
        """Sync on request, once per ``min_sync_period`` on average with bursts of
        ``burst_syncs``, retrying failed frontends; the first once the source has listed."""
        try:
            if self._listed is not None:
                await self._listed.wait()
            while True:
                await self._wait_for_work()
                tokens = self._refill()
                if tokens < 1:
                    await asyncio.sleep((1 - tokens) * self.min_sync_period)
                self._requested.clear()
                await self.sync()
        finally:
            if self._own_executors:
                for pool in self._executors.values():
                    pool.shutdown(wait=False)

    def _refill(self) -> float:
        """The tokens in the bucket now (one more per ``min_sync_period`` since the last look,
        up to ``burst_syncs``)."""
        now = self._clock()
        if self.min_sync_period <= 0:
            self._tokens = float(self.burst_syncs)
        else:
            gained = (now - self._tokens_at) / self.min_sync_period
            self._tokens = min(float(self.burst_syncs), self._tokens + max(0.0, gained))
        self._tokens_at = now
        return self._tokens

    async def _wait_for_work(self) -> None:
        retries = [h.retry_at for h in self._health.values() if h.retry_at is not None]
        if not retries:
            await self._requested.wait()
            return
        timeout = max(0.0, min(retries) - self._clock())
        try:
            await asyncio.wait_for(self._requested.wait(), timeout)
        except TimeoutError:
            pass

    async def sync(self) -> dict[str, str]:
        """Run one sync now; returns frontend name -> error for the frontends that failed."""
        self._syncing = True
        try:
            return await self._sync()
        finally:
            self._syncing = False

    async def _sync(self) -> dict[str, str]:
        started = self._clock()
        self._version, changed = self.table.changes_since(self._version)
        version = self._version
        snapshot = self.table.snapshot(self.node_name, self.node_addresses)
        previous, self.snapshot = self.snapshot, snapshot
        errors: dict[str, str] = {}
        todos: dict[str, frozenset[str]] = {}
        for name in self.frontends:
            health = self._health[name]
            health.pending |= changed
            if health.retry_at is not None and self._clock() < health.retry_at:
                errors[name] = health.last_error or "waiting to retry"
                continue
            if not health.synced or not health.healthy:
                # first sync, or a recovery after a failure that may have left things half done
                health.pending |= snapshot.services | previous.services
            todos[name] = frozenset(health.pending)
        # only a sync that hands a frontend some change takes a token (a retry may be, with
        # none new)
        handed = any(todos.values())
        if handed:
            self._tokens = max(0.0, self._refill() - 1)
        failures = await asyncio.gather(
            *[self._sync_frontend(name, snapshot, todo) for name, todo in todos.items()]
        )
        errors.update({name: error for name, error in zip(todos, failures, strict=True) if error})
        duration = self._clock() - started
        if not self.table.changed_since(version):  # what came meanwhile changed nothing
            version = self.table.version
        self.synced_version = max(self.synced_version, version)
        self._record(snapshot, changed, duration, handed)
        if self.on_sync_done is not None:
            try:
                self.on_sync_done(
                    snapshot=snapshot, changed=changed, duration=duration, errors=errors
                )
            except Exception as exc:
                event(log, "sync observer failed", logging.WARNING, error=repr(exc))
        self.synced_once.set()
        return errors

    async def _sync_frontend(self, name: str, snapshot: Snapshot, todo: frozenset[str]) -> str | None:
        """Give ``snapshot`` and ``todo`` to one frontend; its error, or None."""
        health = self._health[name]
        frontend = self.frontends[name]
        try:
            await asyncio.get_running_loop().run_in_executor(
                self._executors[name], frontend.sync, snapshot, todo
            )
        except Exception as exc:
            return self._failed(health, exc)
        self._succeeded(health)
        if health.rules_missing_since is not None:
            await self._check(name, frontend)
        return None

    # -- checks: rules that heal ----------------------------------------------------------

    async def run_checks(self) -> None:
        """Every ``check_period``, :meth:`Frontend.check` each frontend that is in sync; every
        ``resync_period``, a full rewrite of each (see the module docstring)."""
        next_resync = self._clock() + self.resync_period
        while True:
            await asyncio.sleep(self.check_period)
            resync = self._clock() >= next_resync
            if resync:
                next_resync = self._clock() + self.resync_period
            loop = asyncio.get_running_loop()
            wanted = False
            for name, frontend in self.frontends.items():
                health = self._health[name]
                if not health.synced or not health.healthy:
                    continue  # a failed frontend's retry is a full sync already
                if resync:
                    await loop.run_in_executor(self._executors[name], frontend.resync)
                    self.metrics.resyncs.labels(name, "period").inc()
                    wanted = True
                elif not await self._check(name, frontend):
                    await loop.run_in_executor(self._executors[name], frontend.resync)
                    self.metrics.resyncs.labels(name, "missing").inc()
                    wanted = True
            if wanted:
                self.request_sync()

    async def _check(self, name: str, frontend: Frontend) -> bool:
        """Run ``frontend.check()``; record what it found; whether the rules are in place."""
        health = self._health[name]
        try:
            problem = await asyncio.get_running_loop().run_in_executor(self._executors[name], frontend.check)
        except Exception as exc:
            problem = f"the check failed: {type(exc).__name__}: {exc}"
        if problem is None:
            if health.rules_missing_since is not None:
                event(log, "frontend rules back", frontend=name,
                      missing_for=round(time.time() - health.rules_missing_since, 3))
                health.rules_missing_since = health.rules_problem = None
                self.metrics.rules_missing_now.labels(name).set(0)
            return True
        if health.rules_missing_since is None:
            health.rules_missing_since, health.rules_problem = time.time(), problem
            self.metrics.rules_missing_now.labels(name).set(1)
        self.metrics.rules_missing.labels(name).inc()
        event(log, "frontend rules missing; rewriting them", logging.WARNING, frontend=name,
              problem=problem)
        return False

    def _failed(self, health: FrontendHealth, exc: BaseException) -> str:
        health.failures += 1
        health.healthy = False
        health.last_error = f"{type(exc).__name__}: {exc}"
        wait = min(self.backoff_max, self.backoff_initial * 2 ** (health.failures - 1))
        health.retry_at = self._clock() + wait
        self.metrics.frontend_failures.labels(health.name).inc()
        self.metrics.frontend_healthy.labels(health.name).set(0)
        event(
            log,
            "frontend sync failed",
            logging.WARNING,
            frontend=health.name,
            error=health.last_error,
            failures=health.failures,
            retry_in=round(wait, 3),
        )
        return health.last_error

    def _succeeded(self, health: FrontendHealth) -> None:
        if not health.healthy:
            event(log, "frontend recovered", frontend=health.name, after_failures=health.failures)
        health.healthy, health.synced = True, True
        health.failures, health.last_error, health.retry_at = 0, None, None
        health.pending.clear()
        self.metrics.frontend_healthy.labels(health.name).set(1)

    def _record(self, snapshot: Snapshot, changed: frozenset[str], duration: float,
                handed: bool = False) -> None:
        self.syncs += 1
        m = self.metrics
        m.syncs.inc()
        m.sync_seconds.observe(duration)
        services = len(snapshot.by_service if snapshot.by_service is not None else snapshot.services)
        m.services.set(services)
        m.service_ports.set(len(snapshot.service_ports))
        # the endpoint count of the changed services only: a sync costs what changed, not N
        for key in changed:
            count = sum(len(sp.endpoints) for sp in snapshot.ports_of(key))
            self._endpoint_total += count - self._endpoints_of.pop(key, 0)
            if count:
                self._endpoints_of[key] = count
        m.endpoints.set(self._endpoint_total)
        event(
            log,
            "sync done",
            logging.INFO if changed or handed else logging.DEBUG,
            version=snapshot.version,
            changed=len(changed),
            services=services,
            duration=round(duration, 6),
        )

    # -- health ---------------------------------------------------------------------------

    @property
    def healthy(self) -> bool:
        return all(h.healthy for h in self._health.values())

    def rules_missing(self) -> dict[str, str]:
        """Frontend name -> "rules missing since T: what", for the frontends whose rules are."""
        return {name: text for name, h in self._health.items() if (text := h.rules_missing)}

    def health(self) -> dict[str, dict[str, Any]]:
        """Frontend name -> ``{"healthy", "synced", ...}`` with the error and retry when failing."""
        now = self._clock()
        return {name: h.as_dict(now) for name, h in self._health.items()}
