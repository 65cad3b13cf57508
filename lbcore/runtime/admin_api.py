"""The admin API: the embedded store behind the Kubernetes REST shape.

Services, Pods and Endpoints under ``/api/v1``, EndpointSlices under
``/apis/discovery.k8s.io/v1``, with list, get, create, update, patch, delete and watch, Status
bodies for errors and enough discovery for the official ``kubernetes`` client and kubectl.
Because it speaks the same wire protocol as an API server, the kubernetes source is tested
against it. docs/api.md is the reference.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import hmac
import json
import logging
import platform
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import yaml
from aiohttp import web

from lbcore.model.kinds import KINDS, Kind, kind_for
from lbcore.runtime.store import (
    BadRequest,
    Gone,
    Invalid,
    NotFound,
    Store,
    StoreError,
    Unauthorized,
    Watch,
)

log = logging.getLogger("lbcore.runtime.admin_api")

# URL prefix (/api/v1, /apis/{group}/{version}) -> plural -> the kind served there
SERVED: dict[str, dict[str, Kind]] = {}
for _k in KINDS:
    SERVED.setdefault(_k.api_prefix, {})[_k.plural] = _k
# the named groups (all but the core one): group -> its one version
GROUPS: dict[str, str] = {k.group: k.version for k in KINDS if k.group}
VERBS = ["create", "delete", "get", "list", "patch", "update", "watch"]
# the API server's --min-request-timeout: a watch without timeoutSeconds ends after this long
DEFAULT_WATCH_TIMEOUT = 1800.0
KUBERNETES_VERSION = ("1", "31")
# how often a quiet watch checks that its client is still connected (seconds)
CLIENT_CHECK_INTERVAL = 1.0

_WATCHES = web.AppKey("lbcore_watches", set)


class UnsupportedMediaType(StoreError):
    code = 415
    reason = "UnsupportedMediaType"


class MethodNotAllowed(StoreError):
    code = 405
    reason = "MethodNotAllowed"


def add_routes(
    app: web.Application,
    store: Store,
    token: str | None = None,
    *,
    bookmark_interval: float = 60.0,
) -> None:
    """Serve ``store`` on ``app`` in the shape of the Kubernetes REST API.

    :param token: when set, every write (POST, PUT, PATCH, DELETE) needs
        ``Authorization: Bearer <token>``; reads stay open.
    :param bookmark_interval: seconds without an event after which a watch that allows
        bookmarks gets a BOOKMARK.
    """
    api = _AdminAPI(store, token, bookmark_interval)
    app[_WATCHES] = api.watches
    app.on_shutdown.append(api.end_watches)
    add = app.router.add_route
    # discovery, with and without the trailing slash the official client's calls end with
    for path, handler in (
        ("/version", api.version),
        ("/api", api.api_versions),
        ("/apis", api.api_groups),
        *((f"/apis/{group}", api.group) for group in GROUPS),
        *((prefix, api.resources) for prefix in SERVED),
    ):
        add("GET", path, handler)
        add("GET", path + "/", handler)
    for prefix in SERVED:
        collection = prefix + "/namespaces/{namespace}/{resource}"
        add("GET", collection, api.list_or_watch)
        add("POST", collection, api.create)
        add("*", collection, api.not_allowed)
        item = collection + "/{name}"
        add("GET", item, api.read)
        add("PUT", item, api.replace)
        add("PATCH", item, api.patch)
        add("DELETE", item, api.remove)
        add("*", item, api.not_allowed)
        add("GET", prefix + "/{resource}", api.list_or_watch)
        add("*", prefix + "/{resource}", api.not_allowed)


def _status_response(error: StoreError) -> web.Response:
    return web.json_response(error.status(), status=error.code)


def _handles_errors(handler: Callable[[Any, web.Request], Awaitable[web.StreamResponse]]) -> Any:
    """Answer a StoreError with its Status, anything unexpected with a 500 Status."""

    @functools.wraps(handler)
    async def wrapped(self: Any, request: web.Request) -> web.StreamResponse:
        try:
            return await handler(self, request)
        except StoreError as error:
            return _status_response(error)
        except Exception as exc:  # the client gets a Status, the log the traceback
            log.exception("%s %s failed", request.method, request.path)
            return _status_response(StoreError(f"{type(exc).__name__}: {exc}"))

    return wrapped


def _truthy(value: str | None) -> bool:
    return value is not None and value.lower() in ("true", "1", "yes")


def _field_filter(text: str | None) -> Callable[[Mapping[str, Any]], bool] | None:
    """``fieldSelector`` on metadata.name and metadata.namespace (``=``, ``==``, ``!=``)."""
    if not text:
        return None
    terms: list[tuple[str, bool, str]] = []
    for term in text.split(","):
        term = term.strip()
        for op in ("!=", "==", "="):
            if op in term:
                field, value = (part.strip() for part in term.split(op, 1))
                equal = op != "!="
                break
        else:
            raise BadRequest(f"fieldSelector: {term!r} is not field=value or field!=value")
        if field not in ("metadata.name", "metadata.namespace"):
            raise BadRequest(
                f'fieldSelector: "{field}" is not a supported field selector '
                "(metadata.name, metadata.namespace)"
            )
        terms.append((field.split(".", 1)[1], equal, value))

    def matches(obj: Mapping[str, Any]) -> bool:
        meta = obj.get("metadata") or {}
        return all((meta.get(key) == value) == equal for key, equal, value in terms)

    return matches


class _AdminAPI:
    def __init__(self, store: Store, token: str | None, bookmark_interval: float):
        self.store = store
        self.token = token
        self.bookmark_interval = bookmark_interval
        self.watches: set[Watch] = set()

    async def end_watches(self, app: web.Application) -> None:
        """On shutdown, end every open watch so that the server stops at once."""
        for watcher in list(self.watches):
            watcher.close()

    # -- discovery -----------------------------------------------------------------------------

    @_handles_errors
    async def version(self, request: web.Request) -> web.StreamResponse:
        from lbcore import __version__

        major, minor = KUBERNETES_VERSION
        return web.json_response({
            "major": major,
            "minor": minor,
            "gitVersion": f"v{major}.{minor}.0-lbcore.{__version__}",
            "gitCommit": "",
            "gitTreeState": "clean",
            "buildDate": "2026-11-25T00:00:00Z",
            "goVersion": f"python{platform.python_version()}",
            "compiler": "cpython",
            "platform": f"linux/{platform.machine()}",
        })

    @_handles_errors
    async def api_versions(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [
                {"clientCIDR": "0.0.0.0/0", "serverAddress": request.host},
            ],
        })

    @_handles_errors
    async def resources(self, request: web.Request) -> web.StreamResponse:
        """The ``APIResourceList`` of one group version, from the registry of kinds."""
        kinds = list(SERVED[request.path.rstrip("/")].values())
        return web.json_response({
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": kinds[0].api_version,
            "resources": [
                {
                    "name": k.plural,
                    "singularName": k.singular,
                    "namespaced": k.namespaced,
                    "kind": k.kind,
                    "verbs": VERBS,
                    "shortNames": list(k.short_names),
                }
                for k in kinds
            ],
        })

    @staticmethod
    def _group(group: str) -> dict[str, Any]:
        version = {"groupVersion": f"{group}/{GROUPS[group]}", "version": GROUPS[group]}
        return {"name": group, "versions": [version], "preferredVersion": version}

    @_handles_errors
    async def api_groups(self, request: web.Request) -> web.StreamResponse:
        groups = [self._group(g) for g in GROUPS]
        return web.json_response({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})

    @_handles_errors
    async def group(self, request: web.Request) -> web.StreamResponse:
        name = request.path.rstrip("/").rsplit("/", 1)[1]
        return web.json_response({"kind": "APIGroup", "apiVersion": "v1", **self._group(name)})

    # -- helpers -------------------------------------------------------------------------------

    def _kind(self, request: web.Request) -> str:
        resource = request.match_info["resource"]
        prefix = next(p for p in SERVED if request.path.startswith(p + "/"))
        served = SERVED[prefix].get(resource)
        if served is None:
            raise NotFound("the server could not find the requested resource")
        return served.kind

    def _authorize(self, request: web.Request) -> None:
        if self.token is None:
            return
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), self.token.encode()
        ):
            raise Unauthorized("Authorization: a valid bearer token is required for writes")

    @staticmethod
    async def _body(request: web.Request) -> Any:
        text = await request.text()
        try:
            if "yaml" in request.content_type:
                return yaml.safe_load(text)
            return json.loads(text)
        except (ValueError, yaml.YAMLError) as exc:
            raise BadRequest(f"body: not valid {request.content_type}: {exc}") from None

    def _object(self, request: web.Request, body: Any, kind: str) -> dict[str, Any]:
        """The body as an object of ``kind`` in the URL's namespace (and name, for PUT)."""
        if not isinstance(body, dict):
            raise BadRequest(f"body: expected a {kind} object, got {type(body).__name__}")
        body.setdefault("kind", kind)
        served = kind_for(kind)
        body.setdefault("apiVersion", served.api_version)
        if body["kind"] != kind:
            raise BadRequest(f"kind: {body['kind']!r} sent to the {served.plural} resource")
        meta = body.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise Invalid(kind, "", [])
        namespace = request.match_info["namespace"]
        if meta.setdefault("namespace", namespace) != namespace:
            raise BadRequest(
                f"metadata.namespace: {meta['namespace']!r} does not match the namespace "
                f"{namespace!r} of the request"
            )
        name = request.match_info.get("name")
        if name is not None and meta.setdefault("name", name) != name:
            raise BadRequest(
                f"metadata.name: the name of the object ({meta['name']}) does not match the "
                f"name on the URL ({name})"
            )
        return body

    # -- collection ----------------------------------------------------------------------------

    @_handles_errors
    async def list_or_watch(self, request: web.Request) -> web.StreamResponse:
        kind = self._kind(request)
        namespace = request.match_info.get("namespace")
        query = request.query
        fields = _field_filter(query.get("fieldSelector"))
        if _truthy(query.get("watch")):
            return await self._watch(request, kind, namespace, fields)
        items, rv = self.store.list(kind, namespace, query.get("labelSelector") or None)
        if fields is not None:
            items = [o for o in items if fields(o)]
        return web.json_response({
            "kind": f"{kind}List",
            "apiVersion": kind_for(kind).api_version,
            "metadata": {"resourceVersion": rv},
            "items": items,
        })

    async def _watch(
        self, request: web.Request, kind: str, namespace: str | None,
        fields: Callable[[Mapping[str, Any]], bool] | None,
    ) -> web.StreamResponse:
        query = request.query
        try:
            timeout = float(query.get("timeoutSeconds") or DEFAULT_WATCH_TIMEOUT)
        except ValueError:
            raise BadRequest(
                f"timeoutSeconds: {query['timeoutSeconds']!r} is not a number"
            ) from None
        bookmarks = _truthy(query.get("allowWatchBookmarks"))
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        try:
            watcher = self.store.watch(
                kind, namespace, query.get("resourceVersion") or None, bookmarks,
                query.get("labelSelector") or None, bookmark_interval=self.bookmark_interval,
            )
        except Gone as gone:
            # as the API server does: a 200 stream whose one event is an ERROR carrying the 410
            await response.prepare(request)
            await self._send(response, {"type": "ERROR", "object": gone.status()})
            await response.write_eof()
            return response
        self.watches.add(watcher)
        reaper = asyncio.create_task(_close_when_client_leaves(request, watcher))
        try:
            await response.prepare(request)
            try:
                async with asyncio.timeout(timeout):
                    async for event in watcher:
                        if fields is not None and event["type"] != "BOOKMARK" and not fields(
                            event["object"]
                        ):
                            continue
                        await self._send(response, event)
            except TimeoutError:
                if bookmarks:  # let the client resume from the latest point it has reached
                    await self._send(response, watcher.bookmark())
            await response.write_eof()
        except ConnectionResetError:
            log.debug("watch of %s: the client went away", kind)
        finally:
            reaper.cancel()
            watcher.close()
            self.watches.discard(watcher)
        return response

    @staticmethod
    async def _send(response: web.StreamResponse, event: Mapping[str, Any]) -> None:
        await response.write(json.dumps(event, separators=(",", ":")).encode() + b"\n")

    @_handles_errors
    async def create(self, request: web.Request) -> web.StreamResponse:
        self._authorize(request)
        kind = self._kind(request)
        obj = self._object(request, await self._body(request), kind)
        if _truthy(request.query.get("dryRun")) or request.query.get("dryRun") == "All":
            raise BadRequest("dryRun: not supported")
        return web.json_response(self.store.create(obj), status=201)

    # -- item ----------------------------------------------------------------------------------

    @_handles_errors
    async def read(self, request: web.Request) -> web.StreamResponse:
        kind = self._kind(request)
        info = request.match_info
        return web.json_response(self.store.get(kind, info["namespace"], info["name"]))

    @_handles_errors
    async def replace(self, request: web.Request) -> web.StreamResponse:
        self._authorize(request)
        kind = self._kind(request)
        obj = self._object(request, await self._body(request), kind)
        return web.json_response(self.store.update(obj))

    @_handles_errors
    async def patch(self, request: web.Request) -> web.StreamResponse:
        """Merge patch (JSON merge patch; strategic merge patch is treated as one) or apply
        patch (the body is the whole desired object, created when missing)."""
        self._authorize(request)
        kind = self._kind(request)
        content_type = request.content_type
        info = request.match_info
        body = await self._body(request)
        if content_type == "application/apply-patch+yaml":
            return web.json_response(self.store.apply(self._object(request, body, kind)))
        if content_type not in (
            "application/merge-patch+json", "application/strategic-merge-patch+json"
        ):
            raise UnsupportedMediaType(
                f"Content-Type: {content_type!r} is not supported; use "
                "application/merge-patch+json or application/apply-patch+yaml"
            )
        if not isinstance(body, dict):
            raise BadRequest(f"body: a merge patch is an object, got {type(body).__name__}")
        current = self.store.get(kind, info["namespace"], info["name"])
        merged = _merge_patch(current, body)
        # the patch's own resourceVersion (if any) is a precondition; otherwise last write wins
        patch_rv = (body.get("metadata") or {}).get("resourceVersion")
        merged["metadata"]["resourceVersion"] = patch_rv or current["metadata"]["resourceVersion"]
        return web.json_response(self.store.update(self._object(request, merged, kind)))

    @_handles_errors
    async def remove(self, request: web.Request) -> web.StreamResponse:
        self._authorize(request)
        kind = self._kind(request)
        info = request.match_info
        return web.json_response(self.store.delete(kind, info["namespace"], info["name"]))

    @_handles_errors
    async def not_allowed(self, request: web.Request) -> web.StreamResponse:
        self._kind(request)
        raise MethodNotAllowed(f"{request.method}: the server does not allow this method here")


async def _close_when_client_leaves(request: web.Request, watcher: Watch) -> None:
    """End a quiet watch whose client went away, rather than hold it until timeoutSeconds."""
    while True:
        await asyncio.sleep(CLIENT_CHECK_INTERVAL)
        transport = request.transport
        if transport is None or transport.is_closing():
            watcher.close()
            return


def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: objects merge key by key, ``null`` removes, others replace."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge_patch(result.get(key), value)
    return result
