"""Readiness probes, as a kubelet runs them, for the pods of the embedded store.

A pod's ``readinessProbe`` (``tcpSocket``, ``httpGet`` or ``grpc``; ``exec`` needs a container,
which lbcore never runs) is run against ``status.podIP`` with Kubernetes' fields and defaults: ``initialDelaySeconds`` 0, ``periodSeconds`` 10, ``timeoutSeconds`` 1,
``successThreshold`` 1, ``failureThreshold`` 3. As under a kubelet, a probed pod is not ready
until its probes pass: ``successThreshold`` passes in a row make it ready, ``failureThreshold``
failures in a row make it not ready again. The result is written as the pod's ``Ready``
condition through the store, so endpoints follow as they do in a cluster. When a pod has several
containers with probes, it is ready when all of them pass.

A ``grpc`` probe calls ``grpc.health.v1.Health/Check`` for its ``service`` (default ``""``) and
passes on ``SERVING``, as a kubelet's; it needs the ``grpcio`` and ``grpcio-health-checking``
packages (``pip install lbcore[grpc]``), without which such a probe is left to a kubelet.

Only the daemon's embedded store is probed: with a real cluster, its kubelets do it.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import functools
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lbcore.runtime import jsontext
from lbcore.runtime.logs import event
from lbcore.runtime.store import Conflict, NotFound, call_in_loop

log = logging.getLogger("lbcore.runtime.probes")


@dataclass(frozen=True, slots=True)
class Probe:
    """One container's readinessProbe, with Kubernetes' defaults filled in."""

    kind: str  # "tcpSocket" | "httpGet" | "grpc"
    port: int
    path: str = "/"
    service: str = ""  # grpc: the service name asked of the health service
    scheme: str = "HTTP"
    host: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    initial_delay: float = 0.0
    period: float = 10.0
    timeout: float = 1.0
    success_threshold: int = 1
    failure_threshold: int = 3


def probes_of(pod: Mapping[str, Any]) -> list[Probe]:
    """The readiness probes lbcore can run for ``pod`` (a named port resolved from the
    container's ports); an ``exec`` probe, or a ``grpc`` one without grpcio, is left to a
    kubelet."""
    out = []
    for container in (pod.get("spec") or {}).get("containers") or []:
        spec = (container or {}).get("readinessProbe")
        if not isinstance(spec, Mapping):
            continue
        ports = {p.get("name"): p.get("containerPort") for p in container.get("ports") or []}
        for kind in ("tcpSocket", "httpGet", "grpc"):
            action = spec.get(kind)
            if not isinstance(action, Mapping) or kind == "grpc" and not _grpc_available():
                continue
            port = action.get("port")
            port = ports.get(port) if isinstance(port, str) else port
            if not isinstance(port, int):
                continue
            out.append(Probe(
                kind=kind,
                port=port,
                path=str(action.get("path", "/")),
                scheme=str(action.get("scheme", "HTTP")).upper(),
                service=str(action.get("service") or ""),
                host=action.get("host"),
                headers=tuple((h["name"], h["value"]) for h in action.get("httpHeaders") or []),
                initial_delay=float(spec.get("initialDelaySeconds", 0)),
                period=float(spec.get("periodSeconds", 10)),
                timeout=float(spec.get("timeoutSeconds", 1)),
                success_threshold=int(spec.get("successThreshold", 1)),
                failure_threshold=int(spec.get("failureThreshold", 3)),
            ))
    return out


@functools.cache
def _grpc_available() -> bool:
    try:
        import grpc  # noqa: F401
        from grpc_health.v1 import health_pb2  # noqa: F401
    except ImportError:
        log.info("grpc readiness probes are left to a kubelet: install lbcore[grpc] to run them")
        return False
    return True


def grpc_serving(host: str, port: int, service: str, timeout: float) -> bool:
    """``grpc.health.v1.Health/Check`` of ``service`` at ``host:port`` says ``SERVING``
    (blocking: run in a thread)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    with grpc.insecure_channel(target) as channel:
        try:
            answer = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError:
            return False
    return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)


async def run_probe(probe: Probe, pod_ip: str) -> bool:
    """One try of ``probe`` against the pod: a TCP connect, an HTTP GET answered 200..399, or
    a gRPC health check answered SERVING."""
    host = probe.host or pod_ip
    if probe.kind == "grpc":
        return await asyncio.get_running_loop().run_in_executor(
            None, grpc_serving, host, probe.port, probe.service, probe.timeout)
    try:
        async with asyncio.timeout(probe.timeout):
            if probe.kind == "tcpSocket":
                _, writer = await asyncio.open_connection(host, probe.port)
                writer.close()
                return True
            reader, writer = await asyncio.open_connection(
                host, probe.port, ssl=probe.scheme == "HTTPS" or None
            )
            try:
                authority = f"[{host}]" if ":" in host else host
                lines = [f"GET {probe.path} HTTP/1.1", f"Host: {authority}:{probe.port}",
                         "User-Agent: lbcore-probe", "Connection: close"]
                lines += [f"{name}: {value}" for name, value in probe.headers]
                writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
                status = (await reader.readline()).split()
                return len(status) >= 2 and status[1].isdigit() and 200 <= int(status[1]) < 400
            finally:
                writer.close()
    except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError):
        return False


def ready_condition(pod: Mapping[str, Any]) -> bool | None:
    """The pod's Ready condition as stored (None: none yet)."""
    for c in (pod.get("status") or {}).get("conditions") or []:
        if isinstance(c, Mapping) and c.get("type") == "Ready":
            return str(c.get("status")) == "True"
    return None


def with_ready(pod: Mapping[str, Any], ready: bool, now: _dt.datetime) -> dict[str, Any]:
    """``pod`` with its Ready condition set to ``ready`` (the other conditions kept)."""
    new = dict(pod)
    status = dict(new.get("status") or {})
    conditions = [c for c in status.get("conditions") or [] if c.get("type") != "Ready"]
    conditions.append({
        "type": "Ready",
        "status": "True" if ready else "False",
        "lastTransitionTime": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "reason": "ReadinessProbePassed" if ready else "ReadinessProbeFailed",
    })
    status["conditions"] = conditions
    new["status"] = status
    return new


class ReadinessProber:
    """Probes every pod of ``store`` that has a readinessProbe and writes its Ready condition.

    :param store: the embedded store (``lbcore.runtime.store.Store``).
    """

    def __init__(self, store: Any) -> None:
        self.store = store
        self._tasks: dict[tuple[str, str], tuple[asyncio.Task[None], tuple[Probe, ...], str]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._unsubscribe: Any = None

    async def run(self) -> None:
        """Follow the store's pods until cancelled."""
        self._loop = asyncio.get_running_loop()
        self._unsubscribe = self.store.subscribe(self._changed)
        try:
            for pod in await self._loop.run_in_executor(None, self._pods):
                self._follow(pod)
            await asyncio.Event().wait()
        finally:
            self._unsubscribe()
            for task, _, _ in self._tasks.values():
                task.cancel()
            self._tasks.clear()

    def _pods(self) -> list[dict[str, Any]]:
        # only the pods that may have a readiness probe are decoded (of 100,000, often none)
        bodies, _ = self.store.list_json("Pod")
        return [jsontext.loads(body) for body in bodies if "\"readinessProbe\"" in body]

    def _changed(self, change: Mapping[str, Any]) -> None:
        # called in the writing thread: hand the pod over to the event loop
        pod = change.get("object") or {}
        if pod.get("kind") != "Pod" or self._loop is None:
            return
        # at once when the write was made on the loop (the admin API's are): no wake-up
        call_in_loop(self._loop, self._forget if change.get("type") == "DELETED" else self._follow,
                     pod)

    def _forget(self, pod: Mapping[str, Any]) -> None:
        meta = pod.get("metadata") or {}
        entry = self._tasks.pop((meta.get("namespace", ""), meta.get("name", "")), None)
        if entry is not None:
            entry[0].cancel()

    def _follow(self, pod: Mapping[str, Any]) -> None:
        """Start, keep or restart the probes of ``pod`` (restart when its probes or IP change)."""
        meta = pod.get("metadata") or {}
        key = (meta.get("namespace", ""), meta.get("name", ""))
        probes = tuple(probes_of(pod))
        ip = (pod.get("status") or {}).get("podIP") or ""
        entry = self._tasks.get(key)
        if entry is not None and entry[1:] == (probes, ip) and not entry[0].done():
            return
        if entry is not None:
            entry[0].cancel()
            del self._tasks[key]
        if probes and ip and not meta.get("deletionTimestamp"):
            task = asyncio.get_running_loop().create_task(self._probe(key, probes, ip))
            self._tasks[key] = (task, probes, ip)

    async def _probe(self, key: tuple[str, str], probes: tuple[Probe, ...], ip: str) -> None:
        first = probes[0]
        await asyncio.sleep(max(p.initial_delay for p in probes))
        passes = failures = 0
        ready: bool | None = None
        while True:
            results = await asyncio.gather(*(run_probe(p, ip) for p in probes))
            if all(results):
                passes, failures = passes + 1, 0
                if passes >= first.success_threshold and ready is not True:
                    ready = await self._write(key, True)
            else:
                passes, failures = 0, failures + 1
                # not ready until the probes pass (as under a kubelet); a ready pod turns not
                # ready after failureThreshold failures in a row
                if ready is None or (ready and failures >= first.failure_threshold):
                    ready = await self._write(key, False)
            await asyncio.sleep(first.period)

    async def _write(self, key: tuple[str, str], ready: bool) -> bool | None:
        """Set the pod's Ready condition (retrying a conflicting write); the state written."""
        loop = asyncio.get_running_loop()
        for _ in range(5):
            try:
                pod = await loop.run_in_executor(None, self.store.get, "Pod", *key)
                if ready_condition(pod) is ready:
                    return ready
                now = _dt.datetime.now(_dt.UTC)
                # through the status subresource, as a kubelet writes it
                await loop.run_in_executor(None, functools.partial(
                    self.store.update, with_ready(pod, ready, now), subresource="status"))
                event(log, "pod readiness", pod=f"{key[0]}/{key[1]}", ready=ready)
                return ready
            except NotFound:
                return None
            except Conflict:  # another write came first: read it and try again
                await asyncio.sleep(0.05)
        return None
