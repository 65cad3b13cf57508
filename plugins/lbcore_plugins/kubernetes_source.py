"""The ``kubernetes`` source: list and watch an API server with the official client.

Like kube-proxy's informers, for each kind it follows (one reflector per kind):

1. list, and hand the whole list to the sink (``replace``: what is not in it is gone); an
   object whose resourceVersion is one it had but whose content is not (an etcd restore) is
   handed over as changed: content is compared, not only versions;
2. watch from the list's resourceVersion, with bookmarks, handing each event to the sink;
3. when a watch ends or breaks, watch again from the last resourceVersion seen; when the server
   answers 410 Gone (the version fell out of its history) or 504 "Too large resource version"
   (it restarted with a lower range), list again;
4. back off exponentially, with jitter, on every error and between relists (a server that
   answers every watch with 410 gets a LIST at most every 30 s, not a storm), and log each
   failure on one line.

The client is blocking, so each reflector runs in its own thread and hands events to the sink
on the event loop with ``call_soon_threadsafe``. Every request has a client-side read timeout
(``_request_timeout``) and every watch a shorter server-side one (``timeoutSeconds``), so a
stream that goes silent, its connection still open, is noticed within ``read_timeout``.
:meth:`KubernetesSource.health` says whether the source is in sync; the daemon's ``/healthz``
and ``/readyz`` report it.

Options:
    mode: ``endpointslices`` (Services and EndpointSlices, as kube-proxy) or ``pods`` (Services
        and Pods; lbcore matches selectors and computes endpoints itself). Default
        ``endpointslices``.
    server, token: an API server URL and bearer token (no kubeconfig needed); ``verify_ssl``
        (default true) and ``ca_file`` for https.
    kubeconfig, context: a kubeconfig file and context (default: ``$KUBECONFIG`` or
        ``~/.kube/config``), used when ``server`` is not given.
    in_cluster: use the pod's service account (default: when ``KUBERNETES_SERVICE_HOST`` is set
        and neither ``server`` nor ``kubeconfig`` is).
    namespace: follow one namespace only (default: all).
    routes: ``auto`` (the default) also follows Routes (route.openshift.io/v1) and Ingresses
        (networking.k8s.io/v1) when the server serves their group, and then the Secrets of
        type kubernetes.io/tls their TLS names, for the routing table; true follows them
        whatever discovery says, false never.
    label_selector: which Services and EndpointSlices to follow (default, as kube-proxy:
        ``!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless``, leaving
        out services another proxy serves and headless ones; ``""`` follows all). Pods are
        never filtered.
    watch_timeout: seconds a watch request lasts on the server (``timeoutSeconds``, default 20).
    connect_timeout: seconds to connect (default 10).
    read_timeout: seconds without a byte after which a connection is dead, a watch silent
        (default ``watch_timeout`` + 10: a live server has ended the watch by then).
    backoff_initial, backoff_max: the first and the largest wait after an error (default 0.8 and
        30 seconds); each error doubles it, with up to 100 % jitter.
    unhealthy_after: seconds of failed lists and watches after which the source reports itself
        unhealthy (default 10); a silent watch is unhealthy as soon as it is noticed.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import lbcore
from lbcore import ConfigError, RuntimeContext, Source, SourceSink, option, read_options

MODES: dict[str, tuple[str, ...]] = {
    "endpointslices": ("Service", "EndpointSlice"),
    "pods": ("Service", "Pod"),
}
# what the routing table reads (lbcore.model.routes), when the cluster serves it
ROUTE_KINDS = ("Route", "Ingress", "Secret")
TLS_SECRETS = "type=kubernetes.io/tls"
# kube-proxy's own filter: what another proxy serves, and headless services, are not its job
DEFAULT_LABEL_SELECTOR = "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless"

# answers to a watch that mean "list again": 410 Gone (compacted) and 504 Too large resource
# version (the server's range is lower than the version asked for: a restart or a restore)
RELIST_CODES = (410, 504)


class Expired(Exception):
    """The server no longer has the resourceVersion asked for (410 Gone), or has not reached
    it (504 Too large resource version): list again."""


class SilentWatch(Exception):
    """A watch stream sent no byte for ``read_timeout`` seconds, its connection open."""


@dataclass
class ReflectorHealth:
    """Whether one kind's list and watch are in sync with the server."""

    synced: bool = False
    error: str | None = None
    failing_since: float | None = None  # time.monotonic() of the first failure in a row
    silent: bool = False  # the last failure was a silent watch: only a byte from it clears it
    last_sync: float | None = None  # time.time() when the server last answered in sync

    def ok(self) -> None:
        self.error, self.failing_since, self.silent = None, None, False
        self.last_sync = time.time()

    def fail(self, error: str, silent: bool = False) -> None:
        if self.failing_since is None:
            self.failing_since = time.monotonic()
        self.error = error
        self.silent = self.silent or silent

    def healthy(self, unhealthy_after: float) -> bool:
        if self.error is None or self.failing_since is None:
            return True
        return not self.silent and time.monotonic() - self.failing_since < unhealthy_after


class WatchFailed(Exception):
    """The server ended a watch with an ERROR event other than 410."""


@dataclass
class Backoff:
    """Exponential backoff with jitter, as client-go's: initial, doubled up to ``maximum``."""

    initial: float = 0.8
    maximum: float = 30.0
    _next: float = 0.0

    def reset(self) -> None:
        self._next = 0.0

    def delay(self) -> float:
        """The next wait: doubles after each call, with up to 100 % jitter, capped."""
        self._next = self.initial if self._next == 0.0 else min(self._next * 2, self.maximum)
        return min(self._next * (1.0 + random.random()), self.maximum)


def _auto_or_bool(key: str, value: Any) -> str | bool:
    if value not in ("auto", True, False):
        raise ConfigError(f"{key}: invalid value {value!r}: must be one of auto, true, false")
    return value  # type: ignore[no-any-return]


def _optional_bool(key: str, value: Any) -> bool | None:
    if value is not None and not isinstance(value, bool):
        raise ConfigError(f"{key}: invalid value {value!r}: expected true or false")
    return value  # type: ignore[no-any-return]


@dataclass(frozen=True)
class KubernetesOptions:
    """The ``kubernetes`` source's options (docs/api.md, "The sources that read it")."""

    mode: str = option("endpointslices", choices=tuple(MODES))
    # Routes and Ingresses: "auto" reads them when the server serves their groups
    routes: str | bool = option("auto", parse=_auto_or_bool)
    # the API server: a URL with a token (and CA), else in-cluster, else a kubeconfig
    server: str = ""
    token: str = ""
    verify_ssl: bool = True
    ca_file: str = ""
    kubeconfig: str | None = None
    context: str | None = None
    in_cluster: bool | None = option(None, parse=_optional_bool)
    namespace: str | None = None
    label_selector: str = DEFAULT_LABEL_SELECTOR
    watch_timeout: float = option(20.0, duration=True, least=1.0)
    connect_timeout: float = option(10.0, duration=True, least=0.001)
    # default: watch_timeout + 10 s
    read_timeout: float = option(0.0, duration=True)
    backoff_initial: float = option(0.8, duration=True, least=0.001)
    backoff_max: float = option(30.0, duration=True, least=0.001)
    unhealthy_after: float = option(10.0, duration=True, least=0.001)
    # objects per list request (client-go's pager reads 500 at a time); 0: a list in one answer
    list_chunk_size: int = option(500, least=0)


class KubernetesSource(Source):
    """Feeds the sink from a Kubernetes API server (or anything speaking its protocol)."""

    name = "kubernetes"

    def __init__(self, options: Mapping[str, Any], context: RuntimeContext):
        super().__init__(options, context)
        opts = self.settings = read_options(KubernetesOptions, self.options)
        self.mode: str = opts.mode
        self.routes = opts.routes
        self.kinds = MODES[opts.mode] + (ROUTE_KINDS if opts.routes else ())
        self.namespace: str | None = opts.namespace
        self.label_selector = opts.label_selector
        self.watch_timeout = int(opts.watch_timeout)
        self.connect_timeout = opts.connect_timeout
        self.read_timeout = opts.read_timeout or self.watch_timeout + 10
        self.backoff_initial = opts.backoff_initial
        self.backoff_max = opts.backoff_max
        self.unhealthy_after = opts.unhealthy_after
        self.list_chunk_size = opts.list_chunk_size
        self.log = context.log.getChild("kubernetes")
        self.synced = asyncio.Event()  # set once every kind has been listed into the sink
        # what the reflectors have done, for logs and tests: kind -> count
        self.lists: dict[str, int] = dict.fromkeys(self.kinds, 0)
        self.relists: dict[str, int] = dict.fromkeys(self.kinds, 0)
        self.watches: dict[str, int] = dict.fromkeys(self.kinds, 0)
        self.resource_versions: dict[str, str | None] = dict.fromkeys(self.kinds)
        self.reflectors = {kind: ReflectorHealth() for kind in self.kinds}
        # kind -> (namespace, name) -> (resourceVersion, content digest) of what the sink has,
        # so a relist notices content that changed under an unchanged resourceVersion
        self._handed: dict[str, dict[tuple[str, str], tuple[str, int]]] = {
            kind: {} for kind in self.kinds}
        self._stop = threading.Event()
        self._responses: dict[str, Any] = {}

    def health(self) -> dict[str, Any]:
        """``{"healthy", "synced", "kinds": {kind: {...}}}``: unhealthy while a kind's lists and
        watches have failed for ``unhealthy_after`` seconds, or its watch went silent."""
        kinds: dict[str, Any] = {}
        for kind, reflector in self.reflectors.items():
            entry: dict[str, Any] = {
                "healthy": reflector.healthy(self.unhealthy_after),
                "synced": reflector.synced,
                "lists": self.lists[kind],
                "relists": self.relists[kind],
                "resourceVersion": self.resource_versions[kind],
                "lastSync": reflector.last_sync,
            }
            if reflector.error is not None and reflector.failing_since is not None:
                entry["error"] = reflector.error
                entry["failingFor"] = round(time.monotonic() - reflector.failing_since, 1)
            kinds[kind] = entry
        return {
            "healthy": all(k["healthy"] for k in kinds.values()),
            "synced": all(k["synced"] for k in kinds.values()),
            "kinds": kinds,
        }

    # -- client ---------------------------------------------------------------------------------

    def api_client(self) -> Any:
        """An ``ApiClient`` configured from the options."""
        from kubernetes import client, config

        configuration = client.Configuration()
        opts = self.settings
        if opts.server:
            configuration.host = opts.server.rstrip("/")
            if opts.token:
                configuration.api_key = {"authorization": opts.token}
                configuration.api_key_prefix = {"authorization": "Bearer"}
            configuration.verify_ssl = opts.verify_ssl
            if opts.ca_file:
                configuration.ssl_ca_cert = opts.ca_file
        elif opts.in_cluster or (
            opts.in_cluster is None and not opts.kubeconfig
            and os.environ.get("KUBERNETES_SERVICE_HOST")
        ):
            config.load_incluster_config(client_configuration=configuration)
        else:
            config.load_kube_config(
                config_file=opts.kubeconfig,
                context=opts.context,
                client_configuration=configuration,
            )
        # one retry policy, ours (backoff with jitter, one log line per failure), not urllib3's
        configuration.retries = 0
        return client.ApiClient(configuration)

    def _list_function(self, api_client: Any, kind: str) -> Callable[..., Any]:
        from kubernetes import client

        if kind in ROUTE_KINDS:
            return self._route_list_function(api_client, kind)
        core, discovery = client.CoreV1Api(api_client), client.DiscoveryV1Api(api_client)
        namespaced: dict[str, Callable[..., Any]] = {
            "Service": core.list_namespaced_service,
            "Pod": core.list_namespaced_pod,
            "EndpointSlice": discovery.list_namespaced_endpoint_slice,
        }
        everywhere: dict[str, Callable[..., Any]] = {
            "Service": core.list_service_for_all_namespaces,
            "Pod": core.list_pod_for_all_namespaces,
            "EndpointSlice": discovery.list_endpoint_slice_for_all_namespaces,
        }
        selector: dict[str, Any] = {"label_selector": self.label_selector} if (
            kind != "Pod" and self.label_selector) else {}
        if self.namespace is not None:
            function, namespace = namespaced[kind], self.namespace
            return lambda **kw: function(namespace, **selector, **kw)
        function = everywhere[kind]
        return lambda **kw: function(**selector, **kw)

    def _route_list_function(self, api_client: Any, kind: str) -> Callable[..., Any]:
        """Routes (a custom resource to the client), Ingresses and TLS Secrets, in the
        namespace or everywhere; never filtered by the services' label selector."""
        from kubernetes import client

        ns = self.namespace
        if kind == "Route":
            custom = client.CustomObjectsApi(api_client)
            where = ("route.openshift.io", "v1")
            if ns is not None:
                return lambda **kw: custom.list_namespaced_custom_object(*where, ns, "routes", **kw)
            return lambda **kw: custom.list_cluster_custom_object(*where, "routes", **kw)
        if kind == "Ingress":
            networking = client.NetworkingV1Api(api_client)
            if ns is not None:
                return lambda **kw: networking.list_namespaced_ingress(ns, **kw)
            return lambda **kw: networking.list_ingress_for_all_namespaces(**kw)
        core = client.CoreV1Api(api_client)
        if ns is not None:
            return lambda **kw: core.list_namespaced_secret(ns, field_selector=TLS_SECRETS, **kw)
        return lambda **kw: core.list_secret_for_all_namespaces(field_selector=TLS_SECRETS, **kw)

    def _route_kind_served(self, kind: str, api_client: Any, backoff: Backoff,
                           health: ReflectorHealth) -> bool:
        """Whether the server serves ``kind`` (discovery of its groups; a Secret is followed
        when a Route or an Ingress is); asked again, with backoff, until it answers."""
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        while not self._stop.is_set():
            try:
                groups = {g.name for g in client.ApisApi(api_client).get_api_versions(
                    _request_timeout=(self.connect_timeout, self.read_timeout)).groups}
            except Exception as exc:
                if isinstance(exc, ApiException) and exc.status == 404:
                    return False  # a server with no named group at all
                delay = backoff.delay()
                health.fail(_one_line(exc))
                self.log.warning("discovery for %s failed: %s; retrying in %.1fs", kind,
                                 _one_line(exc), delay)
                self._stop.wait(delay)
                continue
            wanted = ROUTE_KINDS[:2] if kind == "Secret" else (kind,)
            return any(lbcore.kind_for(k).group in groups for k in wanted)
        return False

    # -- run ------------------------------------------------------------------------------------

    async def run(self, sink: SourceSink) -> None:
        loop = asyncio.get_running_loop()
        self._stop.clear()
        # the client's first import and a kubeconfig's reading take a CPU-second or more on a
        # loaded machine: off the loop, which answers /healthz meanwhile
        api_client = await asyncio.to_thread(self.api_client)
        listed: set[str] = set()

        def on_loop(call: Callable[..., None], *args: Any) -> None:
            loop.call_soon_threadsafe(call, *args)

        def mark_listed(kind: str) -> None:
            listed.add(kind)
            if listed >= set(self.kinds):
                self.synced.set()

        executor = ThreadPoolExecutor(len(self.kinds), thread_name_prefix="lbcore-k8s")
        reflectors = [
            loop.run_in_executor(
                executor, self._reflect, kind, self._list_function(api_client, kind), sink,
                on_loop, mark_listed, api_client,
            )
            for kind in self.kinds
        ]
        try:
            await asyncio.gather(*reflectors)
        finally:
            self._stop.set()
            for response in list(self._responses.values()):
                _abort(response)
            # the threads notice the stop flag within one read; do not wait on them here
            executor.shutdown(wait=False, cancel_futures=True)
            api_client.close()

    def _reflect(
        self, kind: str, list_function: Callable[..., Any], sink: SourceSink,
        on_loop: Callable[..., None], mark_listed: Callable[[str], None], api_client: Any = None,
    ) -> None:
        """List, then watch, forever (until stopped): one kind, in its own thread."""
        backoff = Backoff(self.backoff_initial, self.backoff_max)
        health = self.reflectors[kind]
        if kind in ROUTE_KINDS and self.routes == "auto" and not self._route_kind_served(
                kind, api_client, backoff, health):
            if not self._stop.is_set():  # not served: none of them, ever (until a restart)
                self.log.info("the server does not serve %s; not following them", kind)
                on_loop(sink.replace, kind, [])
                on_loop(mark_listed, kind)
                health.ok()
                health.synced = True
            return
        rv: str | None = None
        while not self._stop.is_set():
            try:
                if rv is None:
                    items, rv = self._list(kind, list_function)
                    changed = self._changed_content(kind, items)
                    on_loop(self._hand_over_list, sink, kind, items, changed)
                    on_loop(mark_listed, kind)
                    health.ok()
                    health.synced = True
                started = time.monotonic()
                rv, events = self._watch(kind, list_function, rv, sink, on_loop)
                if events or time.monotonic() - started > 1.0:
                    backoff.reset()
                    continue
                delay = backoff.delay()  # a server that ends every watch at once
            except Expired as exc:
                # list again, after a backoff: a server answering every watch so must not
                # get a storm of LISTs
                rv = None
                self.relists[kind] += 1
                delay = backoff.delay()
                self.log.info("watch %s: %s; listing again in %.1fs", kind, exc, delay)
            except Exception as exc:
                if self._stop.is_set():
                    break
                if rv is not None:  # resume after the last event handed over, not before it
                    rv = self.resource_versions[kind] or rv
                delay = backoff.delay()
                health.fail(_one_line(exc), silent=isinstance(exc, SilentWatch))
                self.log.warning(
                    "%s %s failed: %s; retrying in %.1fs", "watch" if rv else "list", kind,
                    _one_line(exc), delay,
                )
            self._stop.wait(delay)

    def _changed_content(
        self, kind: str, items: list[Mapping[str, Any]]
    ) -> list[tuple[str, str]]:
        """Remember what a list hands over; return the keys whose resourceVersion the sink
        already has with other content (a sink skips a version it has seen)."""
        handed = self._handed[kind]
        changed = []
        now: dict[tuple[str, str], tuple[str, int]] = {}
        for obj in items:
            key, version = _key_and_version(obj)
            now[key] = (version, _digest(obj))
            if key in handed and handed[key][0] == version and handed[key] != now[key]:
                changed.append(key)
        self._handed[kind] = now
        return changed

    @staticmethod
    def _hand_over_list(sink: SourceSink, kind: str, items: list[Mapping[str, Any]],
                        changed: list[tuple[str, str]]) -> None:
        """On the loop, in one go (no sync in between): objects whose content changed under
        the same resourceVersion are deleted first, so that the sink takes them anew."""
        for namespace, name in changed:
            sink.delete(kind, namespace, name)
        sink.replace(kind, items)

    def _list(
        self, kind: str, list_function: Callable[..., Any]
    ) -> tuple[list[Mapping[str, Any]], str]:
        """Every object of ``kind`` and the list's resourceVersion, read ``list_chunk_size``
        at a time (so that neither side builds 100,000 pods in one answer); the server reads
        every chunk at the first one's resourceVersion. When it no longer can (410 on a
        ``continue``), the list is read again in one answer, as client-go's pager does."""
        from kubernetes.client.exceptions import ApiException

        items: list[Mapping[str, Any]] = []
        token: str | None = None
        rv = ""
        limit = self.list_chunk_size
        while True:
            paging: dict[str, Any] = {"limit": limit} if limit else {}
            if token:
                paging["_continue"] = token
            try:
                response = list_function(
                    _preload_content=False,
                    _request_timeout=(self.connect_timeout, self.read_timeout),
                    **paging,
                )
            except ApiException as exc:
                if not (token and exc.status == 410):
                    raise
                self.log.info("list %s: its continue expired (%s); listing in one answer",
                              kind, _one_line(exc))
                items, token, limit = [], None, 0
                continue
            _check_status(response, f"list {kind}")
            body = json.loads(response.data)
            for obj in body.get("items") or []:
                # list items may omit kind and apiVersion; the sink needs them
                obj.setdefault("kind", kind)
                obj.setdefault("apiVersion", lbcore.kind_for(kind).api_version)
                items.append(obj)
            metadata = body.get("metadata") or {}
            rv = rv if token else str(metadata["resourceVersion"])
            token = metadata.get("continue") or None
            if not token or not limit:
                break
        self.lists[kind] += 1
        self.resource_versions[kind] = rv
        self.log.debug("list %s: %d objects at resourceVersion %s", kind, len(items), rv)
        return items, rv

    def _watch(
        self, kind: str, list_function: Callable[..., Any], rv: str, sink: SourceSink,
        on_loop: Callable[..., None],
    ) -> tuple[str, int]:
        """One watch request from ``rv``; return the last resourceVersion seen and how many
        events came. Raises :class:`Expired` on 410 Gone."""
        from kubernetes.client.exceptions import ApiException

        try:
            response = list_function(
                watch=True,
                resource_version=rv,
                allow_watch_bookmarks=True,
                timeout_seconds=self.watch_timeout,
                _preload_content=False,
                _request_timeout=(self.connect_timeout, self.read_timeout),
            )
        except ApiException as exc:
            if exc.status in RELIST_CODES:
                raise Expired(f"watch from resourceVersion {rv}: {_one_line(exc)}") from None
            raise
        _check_status(response, f"watch {kind} from {rv}")
        self.watches[kind] += 1
        self._responses[kind] = response
        health = self.reflectors[kind]
        if not health.silent:  # the server answers; a silent one must send a byte first
            health.ok()
        events = 0
        handed = self._handed[kind]
        try:
            if self._stop.is_set():
                return rv, events
            for line in _lines(response, self.read_timeout):
                health.ok()
                if not line.strip():
                    continue
                event = json.loads(line)
                typ, obj = event.get("type"), event.get("object") or {}
                if typ == "ERROR":
                    if obj.get("code") in RELIST_CODES or obj.get("reason") in ("Expired", "Gone"):
                        raise Expired(obj.get("message") or f"resourceVersion {rv} is gone")
                    raise WatchFailed(f"{obj.get('code')} {obj.get('reason')}: {obj.get('message')}")
                meta = obj.get("metadata") or {}
                events += 1
                if typ in ("ADDED", "MODIFIED"):
                    obj.setdefault("kind", kind)
                    obj.setdefault("apiVersion", lbcore.kind_for(kind).api_version)
                    key, version = _key_and_version(obj)
                    handed[key] = (version, _digest(obj))
                    on_loop(sink.upsert, obj)
                elif typ == "DELETED":
                    handed.pop(_key_and_version(obj)[0], None)
                    on_loop(sink.delete, kind, meta.get("namespace") or "", meta.get("name") or "")
                elif typ != "BOOKMARK":
                    raise WatchFailed(f"unexpected watch event type {typ!r}")
                rv = str(meta.get("resourceVersion") or rv)
                self.resource_versions[kind] = rv
                if self._stop.is_set():
                    break
        finally:
            self._responses.pop(kind, None)
            response.release_conn()
        return rv, events


def _check_status(response: Any, what: str) -> None:
    """Raise for a non-2xx answer (the client does not when content is not preloaded)."""
    status = getattr(response, "status", 200)
    if 200 <= status <= 299:
        return
    try:
        body = json.loads(response.data)
        message = f"{body.get('reason')}: {body.get('message')}"
    except (ValueError, AttributeError):
        message = f"HTTP {status}"
    finally:
        response.release_conn()
    if status in RELIST_CODES:
        raise Expired(f"{what}: HTTP {status} {message}")
    raise WatchFailed(f"{what}: HTTP {status} {message}")


def _lines(response: Any, read_timeout: float) -> Iterator[str]:
    """The lines of a watch stream; a read that timed out is a :class:`SilentWatch`."""
    from kubernetes.watch.watch import iter_resp_lines

    try:
        yield from iter_resp_lines(response)
    except Exception as exc:
        if _timed_out(exc):
            raise SilentWatch(
                f"the watch sent no byte for {read_timeout:g}s, its connection open"
            ) from exc
        raise


def _timed_out(exc: BaseException | None) -> bool:
    """Whether a read timeout is behind ``exc`` (urllib3 wraps it in one or two layers)."""
    for _ in range(8):
        if exc is None:
            return False
        if isinstance(exc, TimeoutError | socket.timeout) or "timed out" in str(exc):
            return True
        exc = getattr(exc, "reason", None) or exc.__cause__ or exc.__context__
    return False


def _key_and_version(obj: Mapping[str, Any]) -> tuple[tuple[str, str], str]:
    meta = obj.get("metadata") or {}
    key = (str(meta.get("namespace") or ""), str(meta.get("name") or ""))
    return key, str(meta.get("resourceVersion") or "")


def _digest(obj: Mapping[str, Any]) -> int:
    """A fingerprint of an object's content (the server writes a kind's fields in one order)."""
    return hash(json.dumps(obj, separators=(",", ":")))


def _abort(response: Any) -> None:
    """Unblock a thread reading ``response``: shut its socket down (as Watch.stop does)."""
    connection = getattr(response, "connection", None) or getattr(response, "_connection", None)
    sock = getattr(connection, "sock", None)
    try:
        if sock is not None:
            sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _one_line(exc: BaseException) -> str:
    status = getattr(exc, "status", None)
    reason = getattr(exc, "reason", None)
    if status is not None:
        return f"HTTP {status} {reason or ''}".strip()
    return " ".join(f"{type(exc).__name__}: {exc}".split())


@lbcore.hookimpl
def lbcore_register_sources() -> dict[str, Any]:
    return {"kubernetes": KubernetesSource}

