"""The embedded store: Kubernetes-shaped objects in SQLite, with a watchable change history.

It plays the part that the API server and etcd play in a cluster, for the kinds lbcore uses
(Service, Pod, Endpoints, EndpointSlice) and the ones a cluster keeps beside them (Namespace,
Event):

- every write gets the next value of one global revision counter (etcd's revision), which
  becomes the object's ``metadata.resourceVersion``, and is acknowledged (returned) only once
  the SQLite transaction that holds it has committed. Writes made through :meth:`Store.grouped`
  on an event loop before it next turns share one transaction (group commit): many concurrent
  writers cost one commit, not one each;
- the last ``history`` changes are kept, so that a watch can resume from a resourceVersion; an
  older one gets ``410 Gone`` and the watcher relists, as with a compacted etcd;
- every write goes through :func:`lbcore.model.admission.admit` (defaults, validation, ClusterIPs
  and NodePorts, keeping what an update leaves out, uid and timestamps) before anything is
  stored; the allocators are rebuilt from the stored Services when the store opens, and what a
  write allocated is given back when its transaction does not commit;
- errors are exception types that carry the Kubernetes ``Status`` they become on the wire;
- namespaces are objects: ``default``, ``kube-system``, ``kube-public`` and ``kube-node-lease``
  exist from the start (and so does every namespace an older store holds objects in); a write
  into a namespace that does not exist is ``NotFound``, as the API server refuses it. Deleting a
  namespace deletes what it holds in the same call (see :meth:`Store.delete`);
- ``status``: a write of the main resource keeps the stored status of a kind that has a
  ``status`` subresource (Service, Pod), a write of the subresource keeps all but the status;
  ``dry_run`` writes admit, allocate and answer as a write would, then give everything back.

Writes may come from any thread; watchers (:meth:`Store.watch`) are consumed on an asyncio loop
and in-process listeners (:meth:`Store.subscribe`) are called after each commit.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import contextvars
import copy
import datetime as _dt
import logging
import sqlite3
import threading
import uuid
from collections import OrderedDict, defaultdict, deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from lbcore.core._selectors import parse_selector
from lbcore.errors import (
    AllocationError,
    Cause,
    ConfigError,
    LbcoreError,
    SelectorError,
    ValidationError,
)
from lbcore.model.admission import Admission, ServiceAllocators, admit, for_subresource
from lbcore.model.allocators import DEFAULT_NODE_PORT_RANGE
from lbcore.model.kinds import ALL_KINDS, Kind, find_kind
from lbcore.model.objects import Object, StoredText, format_timestamp, parse_stored
from lbcore.runtime import jsontext
from lbcore.runtime.config import LOOPBACK_SERVICE_CIDR

log = logging.getLogger("lbcore.runtime.store")

Event = dict[str, Any]  # {"type": "ADDED" | "MODIFIED" | "DELETED" | "BOOKMARK", "object": {...}}
T = TypeVar("T")


# ---------------------------------------------------------------------------------------------
# Errors: each carries the Kubernetes Status it becomes
# ---------------------------------------------------------------------------------------------


class StoreError(LbcoreError):
    """A request the store refuses; :meth:`status` is the Kubernetes ``Status`` to answer with."""

    code = 500
    reason = "InternalError"

    def __init__(
        self,
        message: str,
        *,
        kind: str | None = None,
        name: str | None = None,
        reason: str | None = None,
    ):
        LbcoreError.__init__(self, message)  # not super(): Invalid is a ValidationError too
        self.message = message
        self.kind = kind
        self.name = name
        if reason is not None:
            self.reason = reason

    def details(self) -> dict[str, Any]:
        details: dict[str, Any] = {}
        if self.name:
            details["name"] = self.name
        if self.kind:
            details["kind"] = self.kind
        return details

    def status(self) -> dict[str, Any]:
        """The ``Status`` object (kind Status, apiVersion v1) for this error."""
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        details = self.details()
        if details:
            body["details"] = details
        return body


class BadRequest(StoreError):
    """400: the request itself is malformed (bad JSON, unknown kind, bad selector, ...)."""

    code = 400
    reason = "BadRequest"


class Unauthorized(StoreError):
    """401: a write without the bearer token the server asks for."""

    code = 401
    reason = "Unauthorized"


class NotFound(StoreError):
    """404: no object of that kind, namespace and name."""

    code = 404
    reason = "NotFound"


class Forbidden(StoreError):
    """403: a write the server never allows (deleting ``default``)."""

    code = 403
    reason = "Forbidden"


class AlreadyExists(StoreError):
    """409: a create of an object that exists."""

    code = 409
    reason = "AlreadyExists"


class Conflict(StoreError):
    """409: an update whose ``metadata.resourceVersion`` is not the stored one."""

    code = 409
    reason = "Conflict"


class Gone(StoreError):
    """410: a watch from a resourceVersion older than the history kept (reason ``Expired``)."""

    code = 410
    reason = "Expired"


class TooLargeResourceVersion(StoreError):
    """504: a watch from a resourceVersion this store has not reached (as kube-apiserver answers
    after a restore or a restart with a lower revision range): the client lists again."""

    code = 504
    reason = "Timeout"

    def __init__(self, resource_version: int, current: int):
        StoreError.__init__(
            self, f"Timeout: Too large resource version: {resource_version}, current: {current}"
        )

    def details(self) -> dict[str, Any]:
        return {
            "causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
            "retryAfterSeconds": 1,
        }


class StoreUnreadable(ConfigError):
    """The database cannot be opened or read: not SQLite, no permission, a row that is not
    JSON. The message names the file (and the object) and what to do."""


class Invalid(StoreError, ValidationError):  # type: ignore[misc]  # kind/name: str in both
    """422: an object that fails validation or allocation; ``causes`` lists every field."""

    code = 422
    reason = "Invalid"

    def __init__(self, kind: str, name: str, causes: Iterable[Cause]):
        ValidationError.__init__(self, kind, name, list(causes))
        StoreError.__init__(self, str(self.args[0]), kind=kind, name=name)

    def details(self) -> dict[str, Any]:
        details = super().details()
        details["causes"] = [
            {"reason": c.reason, "message": c.message, "field": c.field} for c in self.causes
        ]
        return details


def _plural(kind: str) -> str:
    found = find_kind(kind)
    return found.plural if found is not None else kind.lower()


def _served(kind: Any) -> Kind:
    """The registry's entry for ``kind`` (its exact name); BadRequest when the store keeps none."""
    found = find_kind(kind) if isinstance(kind, str) else None
    if found is None or found.kind != kind:
        known = ", ".join(sorted(k.kind for k in ALL_KINDS))
        raise BadRequest(f"kind: {kind!r} is not one of {known}", kind=str(kind))
    return found


def _too_old(resource_version: int, oldest: int) -> Gone:
    return Gone(f"too old resource version: {resource_version} ({oldest})")


# ---------------------------------------------------------------------------------------------
# Checks that belong to the storage layer; admission proper is lbcore.model.admission
# ---------------------------------------------------------------------------------------------


def _same_but_version(new: Mapping[str, Any], old: Mapping[str, Any]) -> bool:
    """Whether ``new`` is ``old`` apart from ``metadata.resourceVersion``."""
    if new.keys() != old.keys():
        return False
    for key, value in new.items():
        if key != "metadata" and value != old[key]:
            return False
    new_meta, old_meta = new["metadata"], old["metadata"]
    return {k: v for k, v in new_meta.items() if k != "resourceVersion"} == \
        {k: v for k, v in old_meta.items() if k != "resourceVersion"}


def _identity(obj: Mapping[str, Any]) -> tuple[str, str, str]:
    """(kind, namespace, name) of an object; BadRequest/Invalid when it cannot have one."""
    if not isinstance(obj, Mapping):
        raise BadRequest(f"object: expected a mapping, got {type(obj).__name__}")
    served = _served(obj.get("kind"))
    kind = served.kind
    api_version = obj.get("apiVersion", served.api_version)
    if api_version != served.api_version:
        raise BadRequest(
            f"apiVersion: {api_version!r} is not served for kind {kind}; "
            f"use {served.api_version!r}",
            kind=served.plural,
        )
    meta = obj.get("metadata") or {}
    if not isinstance(meta, Mapping):
        raise Invalid(kind, "", [Cause("metadata", "FieldValueInvalid", "must be an object")])
    name = meta.get("name") or ""
    namespace = (meta.get("namespace") or "default") if served.namespaced else ""
    if not isinstance(name, str) or not isinstance(namespace, str):
        raise Invalid(
            kind, str(name), [Cause("metadata.name", "FieldValueInvalid", "must be a string")]
        )
    return kind, namespace, name


@dataclass(frozen=True, slots=True)
class _Change:
    """One committed change, as kept in the history: the object after and before it."""

    rv: int
    type: str
    kind: str
    namespace: str
    name: str
    obj: dict[str, Any]
    previous: dict[str, Any] | None
    # the bytes of its JSON (object and previous), what a watcher's buffer is bounded by
    size: int = 0

    def event(self) -> Event:
        return {"type": self.type, "object": self.obj}


@dataclass(slots=True)
class _Staged:
    """A write admitted and numbered, waiting for the transaction of its group."""

    rv: int
    type: str
    kind: str
    namespace: str
    name: str
    obj: dict[str, Any] | None  # None: a delete
    previous: dict[str, Any] | None
    after_json: str
    previous_json: str | None
    admission: Admission | None = None
    release: dict[str, Any] | None = None  # a deleted Service's addresses, given back at commit
    # a deleted object as its DELETED event shows it: at the deletion's resourceVersion
    deleted: dict[str, Any] | None = None
    future: asyncio.Future[None] | None = None  # what a grouped writer awaits

    def settle(self, error: BaseException | None = None) -> None:
        """Tell the grouped writer waiting for this write that its transaction ended."""
        future = self.future
        if future is None or future.done():
            return

        def settle() -> None:
            if not future.done():
                if error is None:
                    future.set_result(None)
                else:
                    future.set_exception(error)

        loop = future.get_loop()
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            settle()
        elif not loop.is_closed():
            loop.call_soon_threadsafe(settle)


# the list a write made inside Store.grouped is staged into, instead of being committed at once
_GROUP: contextvars.ContextVar[list[_Staged] | None] = contextvars.ContextVar(
    "lbcore_store_group", default=None
)


def _own(obj: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``obj`` that a write may change at its top and in its metadata (admission
    copies the rest before it changes anything)."""
    body = dict(obj)
    meta = body.get("metadata")
    body["metadata"] = dict(meta) if isinstance(meta, Mapping) else {}
    return body


# ---------------------------------------------------------------------------------------------
# The store
# ---------------------------------------------------------------------------------------------

# rows list_parsed reads and parses at a time
LIST_BATCH = 512
# how many objects' committed texts (besides the namespaces') the store keeps for its reads
RECENT_TEXTS = 1024
# the namespaces every cluster has; the first three cannot be deleted, as in Kubernetes
SYSTEM_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
UNDELETABLE_NAMESPACES = ("default", "kube-system", "kube-public")
# the order in which a namespace's objects go when it is deleted: Services first, so that the
# endpoints controller deletes its own Endpoints and slices rather than writes them again
_NAMESPACE_CONTENT_ORDER = ("Service", "Pod", "EndpointSlice", "Endpoints", "Event")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    kind TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL,
    rv INTEGER NOT NULL, body TEXT NOT NULL,
    PRIMARY KEY (kind, namespace, name)
);
CREATE TABLE IF NOT EXISTS history (
    rv INTEGER PRIMARY KEY, type TEXT NOT NULL,
    kind TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL,
    body TEXT NOT NULL, previous TEXT
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class Store:
    """Kubernetes-shaped objects in SQLite, with allocation, validation, history and watch.

    :param path: the SQLite file (created if missing); ``None`` keeps everything in memory.
    :param service_cidr: the CIDR (or one per IP family) ClusterIPs are allocated from.
    :param node_port_range: the inclusive range NodePorts are allocated from.
    :param history: how many changes are kept for watches to resume from.
    """

    def __init__(
        self,
        path: str | Path | None,
        service_cidr: str | list[str] = LOOPBACK_SERVICE_CIDR,
        node_port_range: tuple[int, int] = DEFAULT_NODE_PORT_RANGE,
        history: int = 1000,
    ):
        if history < 1:
            raise ValueError(f"history: must be at least 1, got {history}")
        self.path = None if path is None else Path(path)
        self.history = int(history)
        # set by an endpoints controller that keeps this store's EndpointSlices (the daemon's):
        # then what reads the store takes endpoints from those slices, as kube-proxy does
        self.slices_kept = False
        self.service_cidrs = [service_cidr] if isinstance(service_cidr, str) else list(service_cidr)
        self.node_port_range = (int(node_port_range[0]), int(node_port_range[1]))
        try:
            self._allocators = ServiceAllocators(self.service_cidrs, self.node_port_range)
        except AllocationError as exc:
            raise ConfigError(str(exc)) from None
        self._lock = threading.RLock()
        self._staged: list[_Staged] = []  # admitted writes waiting for their group's commit
        self._overlay: dict[tuple[str, str, str], str | None] = {}  # their bodies (None: deleted)
        # the committed text of objects read or written lately (a write reads its object, and
        # every write into a namespace reads the namespace): every Namespace, and the
        # last RECENT_TEXTS others; each entry is replaced or dropped by the commit that changes it
        # (resourceVersion, text), which the parsed objects' raw reads first (StoredText)
        self._namespace_texts: dict[str, tuple[int, str]] = {}
        # (an OrderedDict: dropping the oldest of a dict that keeps taking new keys scans the
        # slots its earlier deletions left, on every write)
        self._recent_texts: OrderedDict[tuple[str, str, str], tuple[int, str]] = OrderedDict()
        # kind -> namespace/name -> the object parse() gave (it knows its resourceVersion),
        # keyed by the object's own key string, which its other holders share
        self._parsed: defaultdict[str, dict[str, Object]] = defaultdict(dict)
        self._list_lock = threading.Lock()  # list_parsed's, one reader at a time
        self._stored_text = StoredText(self._text_at)  # the body of what parse() gives
        self._watchers: set[Watch] = set()
        self._listeners: list[Callable[[Event], None]] = []
        self.commits = 0  # transactions that committed writes since the store opened
        self.committed = 0  # the writes they held
        try:
            self._db = sqlite3.connect(
                ":memory:" if self.path is None else str(self.path),
                check_same_thread=False,
                isolation_level=None,  # transactions are explicit: one BEGIN IMMEDIATE per write
            )
        except sqlite3.Error as exc:
            raise StoreUnreadable(f"{self.path}: cannot open the database: {exc}") from None
        try:
            self._open()
        except BaseException:
            self._db.close()
            raise

    def _open(self) -> None:
        """Set the database up and rebuild the allocators from it; a file that is not a
        database, or a row that is not JSON, is a :class:`StoreUnreadable` naming it."""
        try:
            if self.path is not None:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            self._revision = self._meta("revision")  # of the last committed write
            self._check_rows()
            services = self._all("Service")
        except sqlite3.OperationalError as exc:
            raise StoreUnreadable(f"{self.path}: cannot open the database: {exc}") from None
        except sqlite3.DatabaseError as exc:
            raise StoreUnreadable(
                f"{self.path}: not a readable SQLite database ({exc}); stop what uses it, "
                f"move it aside (mv {self.path} {self.path}.corrupt, and its -wal and -shm "
                "files if present) and start again with an empty store"
            ) from None
        for problem in self._allocators.rebuild(services):
            log.warning("stored service keeps an address it cannot hold: %s", problem)
        self._ensure_namespaces()

    def _ensure_namespaces(self) -> None:
        """The namespaces a cluster starts with, and those a store written before namespaces
        were objects holds objects in, as they were there from the start: admitted, at the
        store's current revision, with no change of their own (no revision, no watch event),
        so that the first write of a new store is still resourceVersion 1."""
        used = [ns for (ns,) in self._db.execute(
            "SELECT DISTINCT namespace FROM objects WHERE namespace != '' ORDER BY namespace")]
        for name in dict.fromkeys([*SYSTEM_NAMESPACES, *used]):
            if self._load("Namespace", "", name) is not None:
                continue
            body = self._admit({"apiVersion": "v1", "kind": "Namespace",
                                "metadata": {"name": name}}, None, self._revision).obj
            self._db.execute(
                "INSERT INTO objects (kind, namespace, name, rv, body) VALUES (?, '', ?, ?, ?)",
                ("Namespace", name, self._revision, jsontext.dumps(body)))

    def _check_rows(self) -> None:
        """Every stored object must be a JSON object; SQLite checks them without Python
        parsing each (so that a store of 100,000 objects opens at once)."""
        for table, key in (("objects", "name"), ("history", "rv")):
            row = self._db.execute(
                f"SELECT kind, namespace, name, {key} FROM {table} "
                "WHERE NOT json_valid(body) OR json_type(body) != 'object' LIMIT 1"
            ).fetchone()
            if row is None:
                continue
            kind, namespace, name, which = row
            def quoted(text: str) -> str:
                return "'" + str(text).replace("'", "''") + "'"

            where = f"{table} WHERE " + (
                f"rv = {int(which)}" if table == "history" else
                f"kind = {quoted(kind)} AND namespace = {quoted(namespace)} "
                f"AND name = {quoted(name)}"
            )
            raise StoreUnreadable(
                f"{self.path}: the stored {kind} {namespace}/{name} cannot be read (its {table} "
                f"row is not a JSON object); remove it with: sqlite3 {self.path} "
                f"\"DELETE FROM {where}\", or move the database aside"
            )

    # -- plumbing ------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the database; watchers end."""
        with self._lock:
            try:
                self._flush()
            finally:
                for watcher in list(self._watchers):
                    watcher._end()
                self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _meta(self, key: str) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return int(row[0]) if row else 0

    def _all(self, kind: str) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT body FROM objects WHERE kind = ? ORDER BY namespace, name", (kind,)
        )
        return [jsontext.loads(body) for (body,) in rows]

    def _load(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        key = (kind, namespace, name)
        if key in self._overlay:  # written, its group's commit to come
            staged = self._overlay[key]
            return None if staged is None else jsontext.loads(staged)
        known = self._committed_text(key)
        if known is None:
            row = self._db.execute(
                "SELECT rv, body FROM objects WHERE kind = ? AND namespace = ? AND name = ?",
                (kind, namespace, name),
            ).fetchone()
            if row is None:
                return None
            known = (int(row[0]), row[1])
            self._remember(key, known)
        return jsontext.loads(known[1])

    def _committed_text(self, key: tuple[str, str, str]) -> tuple[int, str] | None:
        """(resourceVersion, JSON text) of an object as committed, if the store remembers it."""
        if key[0] == "Namespace":
            return self._namespace_texts.get(key[2])
        return self._recent_texts.get(key)

    def _text_of(self, key: tuple[str, str, str], obj: Mapping[str, Any]) -> str | None:
        """The text the store committed ``obj`` as, when it remembers its key at ``obj``'s
        resourceVersion (``obj`` as read, not changed since: the old object of a write is)."""
        known = self._committed_text(key)
        meta = obj.get("metadata")
        if known is not None and isinstance(meta, Mapping) and \
                str(known[0]) == meta.get("resourceVersion"):
            return known[1]
        return None

    def committed_json(self, obj: Mapping[str, Any]) -> str | None:
        """The JSON text the store committed ``obj`` as, if ``obj`` is an object as the store
        returned or published it (unchanged) and the store still remembers that version's
        text (every namespace's, the last :data:`RECENT_TEXTS` others'); else None. An answer
        or a watch event sends it rather than encode the object again."""
        kind = obj.get("kind")
        meta = obj.get("metadata")
        if not isinstance(kind, str) or not isinstance(meta, Mapping):
            return None
        key = (kind, str(meta.get("namespace") or ""), str(meta.get("name") or ""))
        with self._lock:
            return self._text_of(key, obj)

    def _remember(self, key: tuple[str, str, str], known: tuple[int, str] | None) -> None:
        """Keep (or with ``None`` forget) the committed text of an object. Under the lock."""
        kind, _, name = key
        texts: dict[Any, tuple[int, str]] = (
            self._namespace_texts if kind == "Namespace" else self._recent_texts)
        which: Any = name if kind == "Namespace" else key
        if known is None:
            texts.pop(which, None)
            return
        texts[which] = known
        if len(self._recent_texts) > RECENT_TEXTS:
            self._recent_texts.popitem(last=False)

    @property
    def revision(self) -> int:
        """The store's current revision (the resourceVersion of the latest change)."""
        return self._revision

    @property
    def watchers(self) -> int:
        """How many watches are open."""
        return len(self._watchers)

    @property
    def watch_backlog(self) -> int:
        """Changes waiting, over every open watch, for their clients to read them."""
        return sum(len(w._pending) for w in list(self._watchers))

    @property
    def oldest_resource_version(self) -> int:
        """The oldest resourceVersion a watch can still start from."""
        return max(0, self._revision - self.history)

    def _next_rv(self) -> int:
        """The resourceVersion the next write takes (after those waiting for their commit)."""
        return self._revision + len(self._staged) + 1

    def _stage(
        self, kind: str, namespace: str, name: str, typ: str, obj: dict[str, Any] | None,
        previous: dict[str, Any] | None, rv: int, admission: Admission | None = None,
        release: dict[str, Any] | None = None,
    ) -> _Staged:
        """Queue one change (``obj`` None deletes ``previous``) for the next commit, under the
        lock. Outside :meth:`grouped` it is committed at once (with any write queued before
        it); inside, the commit runs when the event loop next turns, for every write queued by
        then. The history keeps the object before the change as well: a list read in chunks
        undoes later changes with it."""
        deleted = None
        if obj is None:
            assert previous is not None
            deleted = copy.deepcopy(previous)
            deleted["metadata"]["resourceVersion"] = str(rv)
        after = obj if obj is not None else deleted
        key = (kind, namespace, name)
        entry = _Staged(
            rv, typ, kind, namespace, name, obj, previous,
            jsontext.dumps(after),
            None if previous is None else (self._text_of(key, previous)
                                           or jsontext.dumps(previous)),
            admission, release=release, deleted=deleted,
        )
        self._staged.append(entry)
        self._overlay[key] = None if obj is None else entry.after_json
        group = _GROUP.get()
        if group is None:
            self._flush()
            return entry
        loop = asyncio.get_running_loop()
        entry.future = loop.create_future()
        group.append(entry)
        if len(self._staged) == 1:  # the first of its group: commit the group at the next turn
            loop.call_soon(self._flush_group)
        return entry

    def _flush_group(self) -> None:
        with self._lock:
            try:
                self._flush()
            except Exception:  # each grouped writer has its error; nothing else to tell
                log.debug("a group commit failed", exc_info=True)

    def _flush(self) -> None:
        """Commit every queued write in one transaction, then publish each change in order;
        when the transaction fails, every queued write fails and gives back what it
        allocated. Under the lock."""
        batch, self._staged = self._staged, []
        if not batch:
            return
        self._overlay.clear()
        try:
            self._commit(batch)
        except BaseException as exc:
            for entry in reversed(batch):
                if entry.admission is not None:
                    entry.admission.undo()
            for entry in batch:
                entry.settle(exc)
            raise
        for entry in batch:
            self._remember((entry.kind, entry.namespace, entry.name),
                           None if entry.obj is None else (entry.rv, entry.after_json))
            if entry.admission is not None:
                entry.admission.commit()
            if entry.release is not None:
                self._allocators.release(entry.release)
        for entry in batch:
            if entry.obj is None:
                self._parsed[entry.kind].pop(f"{entry.namespace}/{entry.name}", None)
            after = entry.obj if entry.obj is not None else entry.deleted
            assert after is not None
            size = len(entry.after_json) + len(entry.previous_json or "")
            self._publish(_Change(entry.rv, entry.type, entry.kind, entry.namespace, entry.name,
                                  after, entry.previous, size))
        for entry in batch:
            entry.settle()

    def _commit(self, batch: list[_Staged]) -> None:
        """Write queued changes and their history rows in one transaction."""
        db = self._db
        last = batch[-1].rv
        db.execute("BEGIN IMMEDIATE")
        try:
            for e in batch:
                if e.obj is None:
                    db.execute(
                        "DELETE FROM objects WHERE kind = ? AND namespace = ? AND name = ?",
                        (e.kind, e.namespace, e.name),
                    )
                else:
                    # an upsert changes a stored row in place (REPLACE would delete it and
                    # insert it again under a new rowid, rewriting the key's index entry)
                    db.execute(
                        "INSERT INTO objects (kind, namespace, name, rv, body) "
                        "VALUES (?, ?, ?, ?, ?) ON CONFLICT (kind, namespace, name) "
                        "DO UPDATE SET rv = excluded.rv, body = excluded.body",
                        (e.kind, e.namespace, e.name, e.rv, e.after_json),
                    )
            db.executemany(
                "INSERT INTO history (rv, type, kind, namespace, name, body, previous) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(e.rv, e.type, e.kind, e.namespace, e.name, e.after_json, e.previous_json)
                 for e in batch],
            )
            db.execute("DELETE FROM history WHERE rv <= ?", (last - self.history,))
            db.execute("INSERT INTO meta (key, value) VALUES ('revision', ?) "
                       "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (last,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._revision = last
        self.commits += 1
        self.committed += len(batch)

    async def grouped(self, write: Callable[[], T]) -> T:
        """Run ``write`` (a call of this store's write methods, on the event loop) with its
        commit joined to those of the other writes made on this loop before it next turns: one
        SQLite transaction for them all (group commit). Returns what ``write`` returns, or
        raises what it or the transaction raised, once the transaction has committed: an
        acknowledged write is as durable as one made outside."""
        group: list[_Staged] = []
        token = _GROUP.set(group)
        try:
            result = write()
        finally:
            _GROUP.reset(token)
        for entry in group:
            assert entry.future is not None
            await entry.future
        return result

    def _publish(self, change: _Change) -> None:
        for watcher in list(self._watchers):
            watcher._offer(change)
        event = change.event()
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:  # a listener's bug must not undo a committed write
                log.exception("store listener %r failed on %s", listener, change.type)

    # -- writes --------------------------------------------------------------------------------

    def create(self, obj: Mapping[str, Any], *, dry_run: bool = False) -> dict[str, Any]:
        """Store a new object; return it as stored (uid, resourceVersion, ClusterIPs, ...).

        :param dry_run: admit and allocate, answer as stored (without a resourceVersion), then
            give everything back: nothing is stored, no address stays taken.
        :raises AlreadyExists: an object of that kind, namespace and name exists.
        :raises NotFound: the namespace does not exist.
        :raises Forbidden: the namespace is being deleted.
        :raises Invalid: validation or allocation failed; nothing is stored.
        """
        kind, namespace, name = _identity(obj)
        with self._lock:
            self._check_namespace(kind, namespace, creating=True)
            body = _own(obj)
            meta = body["metadata"]
            if not name and meta.get("generateName"):
                name = self._generate_name(kind, namespace, str(meta["generateName"]))
                meta["name"] = name
            rv = self._next_rv()
            admission = self._admit(body, None, rv)
            if self._load(kind, namespace, name) is not None:
                admission.undo()
                raise AlreadyExists(
                    f'{_plural(kind)} "{name}" already exists', kind=_plural(kind), name=name
                )
            if dry_run:
                admission.undo()
                admission.obj["metadata"].pop("resourceVersion", None)
                return copy.deepcopy(admission.obj)
            return self._write(admission, None, "ADDED", rv)

    def _check_namespace(self, kind: str, namespace: str, creating: bool) -> None:
        """NotFound when a namespaced object's namespace does not exist (the API server's
        NamespaceLifecycle admission); Forbidden for a create in a namespace being deleted."""
        if not namespace:
            return
        stored = self._load("Namespace", "", namespace)
        if stored is None:
            raise NotFound(f'namespaces "{namespace}" not found', kind="namespaces",
                           name=namespace)
        if creating and (stored.get("status") or {}).get("phase") == "Terminating":
            raise Forbidden(
                f'{_plural(kind)} is forbidden: unable to create new content in namespace '
                f"{namespace} because it is being terminated",
                kind=_plural(kind),
            )

    def _admit(self, obj: dict[str, Any], old: dict[str, Any] | None, rv: int) -> Admission:
        """:func:`lbcore.model.admission.admit`, its failures as :class:`Invalid` (422)."""
        try:
            return admit(obj, old, self._allocators, resource_version=str(rv))
        except ValidationError as exc:
            raise Invalid(exc.kind, exc.name, exc.causes) from None

    def _write(self, admission: Admission, old: dict[str, Any] | None, typ: str,
               rv: int) -> dict[str, Any]:
        """Commit an admitted object (see :meth:`_stage`); what it allocated is given back if
        the commit fails. Returns a copy of it as stored, the caller's to change."""
        body = admission.obj
        meta = body["metadata"]
        entry = self._stage(body["kind"], meta.get("namespace", ""), meta["name"], typ, body, old, rv,
                            admission=admission)
        result: dict[str, Any] = jsontext.loads(entry.after_json)
        return result

    def update(self, obj: Mapping[str, Any], *, subresource: str | None = None,
               dry_run: bool = False) -> dict[str, Any]:
        """Replace a stored object (PUT); return it as stored.

        When ``metadata.resourceVersion`` is given it must be the stored one. ClusterIPs and
        NodePorts left out are kept, as the API server does.

        :param subresource: ``"status"``: only the status changes (what a kubelet writes); by
            default the status of a Service or a Pod stays as stored.
        :param dry_run: answer as the update would, store and allocate nothing.
        :raises NotFound: no such object, or no such subresource.
        :raises Conflict: ``metadata.resourceVersion`` is stale.
        :raises Invalid: validation or allocation failed; the stored object is unchanged.
        """
        kind, namespace, name = _identity(obj)
        with self._lock:
            old = self._load(kind, namespace, name)
            if old is None:
                raise NotFound(f'{_plural(kind)} "{name}" not found', kind=_plural(kind), name=name)
            return self._update(_own(obj), old, subresource, dry_run)

    def update_with(self, kind: str, namespace: str, name: str,
                    change: Callable[[dict[str, Any]], Mapping[str, Any]], *,
                    subresource: str | None = None, dry_run: bool = False) -> dict[str, Any]:
        """Replace a stored object with what ``change`` makes of it (a PATCH), read and
        written in one step: no other write comes between. The same as :meth:`update` of
        ``change(get(kind, namespace, name))``, with the object read (and decoded) once.

        :param change: given the stored object, which it must leave as it is; what it returns
            may share values with it (the update copies before it changes anything).
        :raises NotFound: no such object. Else as :meth:`update`, and what ``change`` raises.
        """
        _served(kind)
        with self._lock:
            current = self._load(kind, namespace, name)
            if current is None:
                raise NotFound(f'{_plural(kind)} "{name}" not found', kind=_plural(kind), name=name)
            obj = change(current)
            key = _identity(obj)
            # the object it names is the one updated, as update() takes it
            old = current if key == (kind, namespace, name) else self._load(*key)
            if old is None:
                raise NotFound(f'{_plural(key[0])} "{key[2]}" not found', kind=_plural(key[0]),
                               name=key[2])
            return self._update(_own(obj), old, subresource, dry_run)

    def _update(self, obj: dict[str, Any], old: dict[str, Any], subresource: str | None = None,
                dry_run: bool = False) -> dict[str, Any]:
        kind, namespace, name = _identity(old)
        self._check_namespace(kind, namespace, creating=False)
        try:
            obj = for_subresource(obj, old, subresource)
        except LookupError as exc:
            raise NotFound(str(exc), kind=_plural(kind), name=name) from None
        meta = obj.setdefault("metadata", {})
        given = meta.get("resourceVersion")
        if given not in (None, "") and str(given) != old["metadata"]["resourceVersion"]:
            raise Conflict(
                f'Operation cannot be fulfilled on {_plural(kind)} "{name}": the object has been '
                "modified; please apply your changes to the latest version and try again",
                kind=_plural(kind),
                name=name,
            )
        uid = meta.get("uid")
        if uid and uid != old["metadata"]["uid"]:
            raise Conflict(
                f'Operation cannot be fulfilled on {_plural(kind)} "{name}": Precondition failed: '
                f"UID in precondition: {uid}, UID in object meta: {old['metadata']['uid']}",
                kind=_plural(kind),
                name=name,
            )
        meta.update(name=name)
        if namespace:
            meta["namespace"] = namespace
        rv = self._next_rv()
        admission = self._admit(obj, old, rv)
        if dry_run or _same_but_version(admission.obj, old):
            # A write that changes nothing is not stored, as the API server does: the version
            # stays, no watcher hears of it (and kubectl says "no change").
            admission.undo()
            admission.obj["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
            return copy.deepcopy(admission.obj)
        return self._write(admission, old, "MODIFIED", rv)

    def apply(self, obj: Mapping[str, Any], *, dry_run: bool = False) -> dict[str, Any]:
        """Create the object, or update it when it exists (what ``lbcore apply`` does)."""
        kind, namespace, name = _identity(obj)
        with self._lock:
            old = self._load(kind, namespace, name)
            if old is None:
                return self.create(obj, dry_run=dry_run)
            return self._update(_own(obj), old, None, dry_run)

    def delete(self, kind: str, namespace: str, name: str, *,
               dry_run: bool = False) -> dict[str, Any]:
        """Delete an object; return it, with the resourceVersion of its deletion.

        A Namespace goes as the API server and its namespace controller take it, in one call:
        it is written ``Terminating`` (with a ``deletionTimestamp``; creates in it are refused
        from then on), every object in it is deleted, each with its own DELETED event, then
        the namespace itself. The answer is the namespace as it was while terminating.

        :param dry_run: answer as the delete would, delete nothing.
        :raises NotFound: no such object.
        :raises Forbidden: ``default``, ``kube-system`` and ``kube-public`` are never deleted.
        """
        _served(kind)
        with self._lock:
            old = self._load(kind, namespace, name)
            if old is None:
                raise NotFound(f'{_plural(kind)} "{name}" not found', kind=_plural(kind), name=name)
            if kind == "Namespace" and name in UNDELETABLE_NAMESPACES:
                raise Forbidden(
                    f'namespaces "{name}" is forbidden: this namespace may not be deleted',
                    kind="namespaces", name=name,
                )
            if dry_run:
                return old
            if kind == "Namespace":
                old = self._terminate(old)
            entry = self._stage(kind, namespace, name, "DELETED", None, old, self._next_rv(),
                                release=old if kind == "Service" else None)
            result: dict[str, Any] = jsontext.loads(entry.after_json)
            return result

    def _terminate(self, namespace: dict[str, Any]) -> dict[str, Any]:
        """Write a namespace as Terminating, then delete what it holds (under the lock)."""
        name = namespace["metadata"]["name"]
        terminating = copy.deepcopy(namespace)
        if (terminating.get("status") or {}).get("phase") != "Terminating":
            terminating["metadata"]["deletionTimestamp"] = format_timestamp(
                _dt.datetime.now(_dt.UTC))
            terminating["metadata"]["deletionGracePeriodSeconds"] = 0
            terminating["status"] = {"phase": "Terminating"}
            rv = self._next_rv()
            terminating["metadata"]["resourceVersion"] = str(rv)
            self._stage("Namespace", "", name, "MODIFIED", terminating, namespace, rv)
        kinds = [*_NAMESPACE_CONTENT_ORDER, *(k.kind for k in ALL_KINDS if k.namespaced
                                              and k.kind not in _NAMESPACE_CONTENT_ORDER)]
        for kind in kinds:
            stored = {item for (item,) in self._db.execute(
                "SELECT name FROM objects WHERE kind = ? AND namespace = ?", (kind, name))}
            # and those written but not yet committed (a group commit to come)
            stored |= {key[2] for key in self._overlay if key[:2] == (kind, name)}
            for item in sorted(stored):
                with contextlib.suppress(NotFound):
                    self.delete(kind, name, item)
        return terminating

    def _generate_name(self, kind: str, namespace: str, prefix: str) -> str:
        for _ in range(16):
            name = prefix + uuid.uuid4().hex[:5]
            if self._load(kind, namespace, name) is None:
                return name
        raise AlreadyExists(f"metadata.generateName: no free name with prefix {prefix!r}")

    # -- reads ---------------------------------------------------------------------------------

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any]:
        """One object. :raises NotFound: no such object."""
        _served(kind)
        with self._lock:
            obj = self._load(kind, namespace, name)
        if obj is None:
            raise NotFound(f'{_plural(kind)} "{name}" not found', kind=_plural(kind), name=name)
        return obj

    def list(
        self, kind: str, namespace: str | None = None, label_selector: Any = None
    ) -> tuple[list[dict[str, Any]], str]:
        """Objects of ``kind`` (in ``namespace``, or all), sorted by namespace and name, and the
        list's resourceVersion (the store's revision when it was read).

        :param label_selector: a Kubernetes selector string or a compiled selector.
        :raises BadRequest: the selector does not parse.
        """
        _served(kind)
        matches = _selector(label_selector)
        # SQLite skips the rows that cannot match (kubectl's service-name=... of slices), so
        # that they are neither copied out nor parsed; the selector still decides below
        required = _required_text(label_selector)
        bodies, revision = self._bodies(kind, namespace, required)
        items = [jsontext.loads(body) for body in bodies]  # outside the lock: writers go on
        if matches is not None:
            items = [o for o in items if matches(_labels(o))]
        return items, str(revision)

    def _bodies(self, kind: str, namespace: str | None,
                required: Sequence[str] = ()) -> tuple[Sequence[str], int]:
        """The JSON text of the objects :meth:`list` gives (holding each string of
        ``required``), and the revision they are at."""
        rows, revision = self._rows(kind, namespace, required, "body")
        return [body for (body,) in rows], revision

    @staticmethod
    def _select(kind: str, namespace: str | None, required: Sequence[str] = (),
                columns: str = "body") -> tuple[str, tuple[str, ...]]:
        """The query of ``columns`` of the rows :meth:`list` reads, in its order, and its
        arguments."""
        where = " AND instr(body, ?) > 0" * len(required)
        if namespace is None:
            return (f"SELECT {columns} FROM objects WHERE kind = ?{where} ORDER BY namespace, name",
                    (kind, *required))
        return (f"SELECT {columns} FROM objects WHERE kind = ? AND namespace = ?{where} "
                "ORDER BY name", (kind, namespace, *required))

    def _rows(self, kind: str, namespace: str | None, required: Sequence[str] = (),
              columns: str = "body") -> tuple[Sequence[tuple[Any, ...]], int]:
        """``columns`` of the rows :meth:`list` reads, in its order, and the revision."""
        with self._lock:
            return (self._db.execute(*self._select(kind, namespace, required, columns)).fetchall(),
                    self._revision)

    def list_parsed(self, kind: str, namespace: str | None = None
                    ) -> tuple[Sequence[Object | dict[str, Any]], str]:
        """The objects of ``kind`` (in ``namespace``, or all) as :meth:`parse` reads them, in
        :meth:`list`'s order, and the list's resourceVersion; an object that cannot be parsed
        is given as its dict (the reader's :meth:`parse` says why).

        For the readers of every object at start (the endpoints controller and the local
        source): they get the same parsed objects (one per version, as :meth:`parse` gives),
        and nobody holds the decoded dicts. A row is decoded only when its version is not
        parsed yet, and its dict is dropped as soon as it is parsed (the object keeps no text:
        its ``raw`` reads the row when asked), so that a start over 130,000 objects holds one dict at a time
        rather than all of them (about 5 kB each) while it builds what it keeps: those
        dicts, freed afterwards, left Python's allocator about 400 MB of free blocks scattered
        among the kept objects, which it never gave back."""
        _served(kind)
        items: builtins.list[Object | dict[str, Any]] = []
        with self._list_lock:  # a second reader waits, then finds the first one's objects
            if self.path is None:  # in memory: read at once under the writers' lock
                rows, revision = self._rows(kind, namespace, columns="namespace, name, rv, body")
                self._parse_rows(kind, rows, items)
                return items, str(revision)
            # a file: read a few hundred rows at a time through a reader of its own, in one
            # read transaction; all the texts of 100,000 pods fetched at once (150 MB, freed
            # after the parse) left glibc's heaps fragmented around what the parse kept
            with self._snapshot() as (reader, revision):
                cursor = reader.execute(*self._select(kind, namespace,
                                                      columns="namespace, name, rv, body"))
                while rows := cursor.fetchmany(LIST_BATCH):
                    self._parse_rows(kind, rows, items)
            return items, str(revision)

    def _parse_rows(self, kind: str, rows: Sequence[tuple[Any, ...]],
                    items: builtins.list[Object | dict[str, Any]]) -> None:
        """Append to ``items`` what :meth:`list_parsed` gives for each ``(namespace, name, rv,
        text)`` row."""
        parsed = self._parsed[kind]
        for row_namespace, name, rv, text in rows:
            known = parsed.get(f"{row_namespace or 'default'}/{name}")
            if known is not None and known.resource_version == str(rv):
                items.append(known)
                continue
            obj = jsontext.loads(text)
            try:
                items.append(self._parse(obj))
            except ValidationError:
                items.append(obj)

    def parse(self, obj: Mapping[str, Any] | Object) -> Object:
        """:func:`lbcore.model.objects.parse_stored` of a stored object, parsed once per
        resourceVersion: the endpoints controller and the local source's ``ClusterState`` see
        every version of every object, and the second one gets the object the first parsed
        (parsed objects are not changed by those who hold them), so the daemon parses and
        keeps one copy of each. Only the latest version of each object is remembered; a
        deletion forgets it. An object already parsed (from :meth:`list_parsed`) is given
        back as it is.

        :raises ValidationError: as ``parse_stored``.
        """
        if isinstance(obj, Object):
            return obj
        return self._parse(obj)

    def _parse(self, obj: Mapping[str, Any]) -> Object:
        meta = obj.get("metadata")
        meta = meta if isinstance(meta, Mapping) else {}
        version = str(meta.get("resourceVersion") or "")
        kind_parsed = self._parsed[str(obj.get("kind"))]
        known = kind_parsed.get(f"{meta.get('namespace') or 'default'}/{meta.get('name') or ''}")
        if known is not None and version and known.resource_version == version:
            return known
        # no text kept beside the fields: the store reads it when asked (StoredText). Nothing
        # the daemon runs reads a pod's or a service's; the endpoints controller compares its
        # slices and Endpoints by digest, and reads a slice's text only to rewrite it
        parsed = parse_stored(obj, stored=self._stored_text)
        if version:
            kind_parsed[parsed.key] = parsed
        return parsed

    def _text_at(self, obj: Object) -> str:
        """The JSON text of a parsed object at its resourceVersion (its ``raw``, when its
        ``body`` is this store's :class:`StoredText`): the committed text the store remembers,
        the object's row, or its history.

        :raises NotFound: that version is neither the object's row nor in the history kept."""
        key = (obj.kind, obj.namespace, obj.name)
        version = obj.resource_version
        with self._lock:
            known = self._committed_text(key)
            if known is not None and str(known[0]) == version:
                return known[1]
            for (text,) in self._db.execute(
                    "SELECT body FROM objects WHERE kind = ? AND namespace = ? AND name = ? "
                    "AND rv = ?", (*key, version)):
                return str(text)
            for (text,) in self._db.execute(
                    "SELECT body FROM history WHERE rv = ? AND kind = ? AND namespace = ? "
                    "AND name = ? AND type != 'DELETED'", (version, *key)):
                return str(text)
        raise NotFound(f'{_plural(obj.kind)} "{obj.name}" at resourceVersion {version} is no '
                       "longer stored", kind=_plural(obj.kind), name=obj.name)

    def list_json(self, kind: str, namespace: str | None = None) -> tuple[Sequence[str], str]:
        """As :meth:`list` without a selector, each object as the JSON text it is stored as,
        so that a large list is answered without parsing it (and from any thread), read as
        :meth:`_snapshot` reads."""
        _served(kind)
        args: tuple[str, ...] = (kind,)
        query = "SELECT body FROM objects WHERE kind = ? ORDER BY namespace, name"
        if namespace is not None:
            query = "SELECT body FROM objects WHERE kind = ? AND namespace = ? ORDER BY name"
            args = (kind, namespace)
        with self._snapshot() as (db, revision):
            rows = db.execute(query, args).fetchall()
        return [body for (body,) in rows], str(revision)

    @contextlib.contextmanager
    def _snapshot(self) -> Iterator[tuple[sqlite3.Connection, int]]:
        """A connection to read committed state from, and the revision that state is at.

        A store in a file is read through a connection of its own, in one read transaction
        (WAL gives it a snapshot, the revision included), so that a list of 50,000 objects
        never holds the lock writers take; one in memory is read under that lock."""
        if self.path is None:
            with self._lock:
                yield self._db, self._revision
            return
        reader = sqlite3.connect(
            self.path.resolve().as_uri() + "?mode=ro", uri=True, isolation_level=None
        )
        try:
            reader.execute("BEGIN")
            revision = reader.execute("SELECT value FROM meta WHERE key = 'revision'").fetchone()
            yield reader, int(revision[0]) if revision else 0
            reader.execute("COMMIT")
        finally:
            reader.close()

    # -- change notification -------------------------------------------------------------------

    def list_chunk(
        self, kind: str, namespace: str | None, after: tuple[str, str] | None, limit: int,
        revision: int | None = None,
    ) -> tuple[Sequence[tuple[str, str, str]], int, bool]:
        """One chunk of a list in pieces (``limit``/``continue``): up to ``limit`` objects of
        ``kind`` whose (namespace, name) comes after ``after``, in :meth:`list`'s order, as they
        were at ``revision`` (None: now), as ``(namespace, name, JSON text)``; the revision they
        are at; and whether more objects follow.

        Every chunk of one list is read at the first chunk's revision, as the API server reads
        etcd's snapshot: what changed since is undone from the history kept for watches.

        :raises Gone: ``revision`` is older than that history (:attr:`oldest_resource_version`).
        """
        _served(kind)
        if limit < 1:
            raise ValueError(f"limit: must be at least 1, got {limit}")
        where, args = "kind = ?", [kind]
        if namespace is not None:
            where, args = where + " AND namespace = ?", args + [namespace]
        if after is not None:
            where, args = where + " AND (namespace, name) > (?, ?)", args + list(after)
        with self._snapshot() as (db, now):
            at = now if revision is None else revision
            if at < now - self.history:
                raise _too_old(at, now - self.history)
            # each object changed since ``at`` as it was then (None: it did not exist), from the
            # earliest change after ``at``: the state before it is the one at ``at``
            then: dict[tuple[str, str], str | None] = {}
            for typ, ns, name, body, previous in db.execute(
                    f"SELECT type, namespace, name, body, previous FROM history "
                    f"WHERE {where} AND rv > ? ORDER BY rv DESC", (*args, at)):
                then[(ns, name)] = None if typ == "ADDED" else (previous or body)
            # enough current rows that, with every changed one left out, ``limit`` remain
            fetch = limit + len(then) + 1
            rows = db.execute(
                f"SELECT namespace, name, body FROM objects WHERE {where} "
                "ORDER BY namespace, name LIMIT ?", (*args, fetch),
            ).fetchall()
        exhausted = len(rows) < fetch
        last = (rows[-1][0], rows[-1][1]) if rows else None
        merged = [row for row in rows if (row[0], row[1]) not in then]
        # a changed object beyond the last row read is not known to be in this chunk yet
        merged += [(ns, name, text) for (ns, name), text in then.items()
                   if text is not None and (exhausted or (ns, name) <= last)]  # type: ignore[operator]
        merged.sort(key=lambda row: (row[0], row[1]))
        # fewer than ``limit`` left out of ``fetch`` rows: a chunk short of rows is the last
        return merged[:limit], at, len(merged) > limit

    def subscribe(self, callback: Callable[[Event], None]) -> Callable[[], None]:
        """Call ``callback({"type", "object"})`` after each committed change, in the writing
        thread, in commit order. Returns the function that unsubscribes."""
        with self._lock:
            self._listeners.append(callback)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._listeners:
                    self._listeners.remove(callback)

        return unsubscribe

    def watch(
        self,
        kind: str,
        namespace: str | None = None,
        resource_version: str | int | None = None,
        allow_bookmarks: bool = False,
        label_selector: Any = None,
        *,
        bookmark_interval: float = 60.0,
    ) -> Watch:
        """Changes of ``kind`` as an async iterator of ``{"type", "object"}`` events.

        Must be called on the event loop that consumes it.

        - ``resource_version`` ``None``, ``""`` or ``"0"``: an ADDED event for each current
          object, then every later change;
        - ``resource_version`` N: every change after N;
        - with ``label_selector``, an object that stops matching arrives as DELETED and one
          that starts matching as ADDED (as the API server's watch cache does);
        - ``allow_bookmarks``: a BOOKMARK (an object with only ``metadata.resourceVersion``)
          after ``bookmark_interval`` seconds without an event.

        :raises Gone: N is older than the history kept (:attr:`oldest_resource_version`).
        :raises TooLargeResourceVersion: N is newer than the store's revision.
        :raises BadRequest: a resourceVersion or selector that does not parse.
        """
        _served(kind)
        matches = _selector(label_selector)
        loop = asyncio.get_running_loop()
        with self._lock:
            if resource_version in (None, "", "0", 0):
                items, rv = self.list(kind, namespace, None)
                start = int(rv)
                initial = [
                    _Change(start, "ADDED", kind, o["metadata"].get("namespace", ""),
                            o["metadata"]["name"], o, None)
                    for o in items
                ]
            else:
                try:
                    start = int(resource_version)
                except (TypeError, ValueError):
                    raise BadRequest(
                        f"resourceVersion: {resource_version!r} is not an integer"
                    ) from None
                if start < self.oldest_resource_version:
                    raise _too_old(start, self.oldest_resource_version)
                if start > self._revision:
                    raise TooLargeResourceVersion(start, self._revision)
                initial = [self._change_from_row(r) for r in self._db.execute(
                    "SELECT rv, type, kind, namespace, name, body, previous FROM history "
                    "WHERE rv > ? ORDER BY rv", (start,))]
            watcher = Watch(self, loop, kind, namespace, matches, allow_bookmarks,
                            bookmark_interval, start, initial)
            self._watchers.add(watcher)
        return watcher

    @staticmethod
    def _change_from_row(row: tuple[Any, ...]) -> _Change:
        rv, typ, kind, namespace, name, body, previous = row
        return _Change(int(rv), typ, kind, namespace, name, jsontext.loads(body),
                       None if previous is None else jsontext.loads(previous))

    def _unwatch(self, watcher: Watch) -> None:
        with self._lock:
            self._watchers.discard(watcher)


def _labels(obj: Mapping[str, Any]) -> Mapping[str, str]:
    return (obj.get("metadata") or {}).get("labels") or {}


def label_filter(label_selector: Any) -> Callable[[Mapping[str, Any]], bool] | None:
    """Whether an object's labels match a selector (as :meth:`Store.list` filters), or None
    when the selector takes every object.

    :raises BadRequest: the selector does not parse."""
    matches = _selector(label_selector)
    if matches is None:
        return None
    return lambda obj: matches(_labels(obj))


def _required_text(label_selector: Any) -> list[str]:
    """``"key":"value"`` for each ``key=value`` term of a selector string: text that the stored
    JSON of every matching object holds (bodies are compact JSON, and label keys and values
    need no escaping: a term with other characters than printable ASCII is left to the
    selector). A quick filter only; the selector decides."""
    if not isinstance(label_selector, str):
        return []
    required = []
    for term in label_selector.split(","):
        key, op, value = term.partition("==") if "==" in term else term.partition("=")
        key, value = key.strip(), value.strip()
        if (op and key and value and not key.endswith("!") and "(" not in term
                and (key + value).isascii() and (key + value).isprintable()
                and '"' not in key + value and "\\" not in key + value):
            required.append(jsontext.dumps({key: value})[1:-1])
    return required


def _selector(label_selector: Any) -> Callable[[Mapping[str, str]], bool] | None:
    """A label-matching function from a selector string or compiled selector (None: all)."""
    if label_selector is None or label_selector == "":
        return None
    if isinstance(label_selector, str):
        try:
            compiled = parse_selector(label_selector)
        except SelectorError as exc:
            raise BadRequest(f"labelSelector: {label_selector!r}: {exc}") from None
        return compiled.matches
    return label_selector.matches


# ---------------------------------------------------------------------------------------------
# Watch
# ---------------------------------------------------------------------------------------------

# A watcher that falls this far behind (in events, or in bytes of JSON waiting for it) is ended
# with a 410, as the API server ends a slow watcher, and what waited for it is let go at once:
# a client that stopped reading cannot grow the daemon's memory without bound. Its client lists
# again.
MAX_PENDING = 10_000
MAX_PENDING_BYTES = 16 * 1024 * 1024


def call_in_loop(loop: asyncio.AbstractEventLoop, callback: Callable[..., Any], *args: Any) -> None:
    """Run ``callback(*args)`` in ``loop``: at once when called from that loop, else soon, from
    whichever thread calls (a commit hook runs in the writing thread). Nothing once it is closed."""
    if loop.is_closed():
        return
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        callback(*args)
    else:
        loop.call_soon_threadsafe(callback, *args)


class Watch(AsyncIterator[Event]):
    """One watcher's stream of events; see :meth:`Store.watch`. ``close()`` ends it."""

    def __init__(
        self, store: Store, loop: asyncio.AbstractEventLoop, kind: str, namespace: str | None,
        matches: Callable[[Mapping[str, str]], bool] | None, allow_bookmarks: bool,
        bookmark_interval: float, start: int, initial: list[_Change],
    ):
        self._store = store
        self._loop = loop
        self.kind = kind
        self.namespace = namespace
        self._matches = matches
        self.allow_bookmarks = allow_bookmarks
        self.bookmark_interval = bookmark_interval
        self.resource_version = start  # every change up to here has been delivered or skipped
        self._pending: deque[_Change] = deque(initial)
        self._pending_bytes = 0  # of the changes offered since the start (not the initial ones)
        self._wakeup = asyncio.Event()
        self._ended = False
        self._overflowed = False
        if initial:
            self._wakeup.set()

    # called under the store lock, from the writing thread
    def _offer(self, change: _Change) -> None:
        if self._overflowed:
            return
        if (len(self._pending) >= MAX_PENDING
                or self._pending_bytes + change.size > MAX_PENDING_BYTES):
            log.warning(
                "watch of %s fell %d events (%d bytes) behind; ending it with 410",
                self.kind, len(self._pending), self._pending_bytes,
            )
            self._overflowed = True
            self._pending.clear()  # let go of what it held now, not when its client reads
            self._pending_bytes = 0
        else:
            self._pending.append(change)
            self._pending_bytes += change.size
        self._poke()

    @property
    def overflowed(self) -> bool:
        """Whether this watcher fell too far behind and ends with a 410 ERROR event."""
        return self._overflowed

    @property
    def pending_bytes(self) -> int:
        """Bytes of JSON waiting for this watcher's client (changes since it started)."""
        return self._pending_bytes

    def _poke(self) -> None:
        call_in_loop(self._loop, self._wakeup.set)

    def _end(self) -> None:
        self._ended = True
        self._poke()

    def close(self) -> None:
        """Stop watching; iteration ends after the events already delivered."""
        self._store._unwatch(self)
        self._end()

    def bookmark(self) -> Event:
        """A BOOKMARK event at the resourceVersion this watcher has reached."""
        api_version = _served(self.kind).api_version
        return {
            "type": "BOOKMARK",
            "object": {
                "kind": self.kind,
                "apiVersion": api_version,
                "metadata": {"resourceVersion": str(self.resource_version)},
            },
        }

    def _filter(self, change: _Change) -> Event | None:
        if change.kind != self.kind:
            return None
        if self.namespace is not None and change.namespace != self.namespace:
            return None
        if self._matches is None:
            return change.event()
        now = self._matches(_labels(change.obj))
        if change.type == "MODIFIED" and change.previous is not None:
            before = self._matches(_labels(change.previous))
            if now and not before:
                return {"type": "ADDED", "object": change.obj}
            if before and not now:
                gone = copy.deepcopy(change.previous)
                gone["metadata"]["resourceVersion"] = str(change.rv)
                return {"type": "DELETED", "object": gone}
        return change.event() if now else None

    def __aiter__(self) -> Watch:
        return self

    def _next_ready(self) -> Event | None:
        """The next event already waiting (None: none is, or the watch overflowed)."""
        while self._pending and not self._overflowed:
            change = self._pending.popleft()
            self._pending_bytes -= change.size
            event = self._filter(change)
            self.resource_version = max(self.resource_version, change.rv)
            if event is not None:
                return event
        return None

    def take_ready(self) -> list[Event]:
        """The events already waiting, without waiting for more: what the next iterations would
        give before they wait (a group commit's changes arrive together; a server writes them
        to its client at once)."""
        events = []
        while (event := self._next_ready()) is not None:
            events.append(event)
        return events

    async def __anext__(self) -> Event:
        while True:
            event = self._next_ready()
            if event is not None:
                return event
            if self._overflowed and not self._ended:
                self.close()  # one ERROR event, then the end
                gone = _too_old(self.resource_version, self._store.revision)
                gone.message += ": the watch fell too far behind its changes; list again"
                return {"type": "ERROR", "object": gone.status()}
            if self._ended or self._overflowed:
                self.close()
                raise StopAsyncIteration
            self._wakeup.clear()
            if self.allow_bookmarks:
                try:
                    await asyncio.wait_for(self._wakeup.wait(), self.bookmark_interval)
                except TimeoutError:
                    return self.bookmark()
            else:
                await self._wakeup.wait()
