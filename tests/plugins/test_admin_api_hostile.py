"""The admin API under hostile input, over HTTP on 127.0.0.1: every refusal is a Status with
the right code, names the field, stores nothing, and the server keeps answering."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from lbcore.runtime import admin_api
from lbcore.runtime.store import MAX_PENDING_BYTES, Store

SERVICES = "/api/v1/namespaces/default/services"


def send(url: str, method: str = "POST", body: bytes | None = None,
         headers: dict[str, str] | None = None, timeout: float = 10) -> tuple[int, Any]:
    """One request; the answer's code and JSON body. ``timeout`` bounds how long it may take."""
    request = urllib.request.Request(url, data=body, method=method)
    for key, value in (headers or {}).items():
        request.add_header(key, value)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def service(name: str, **metadata: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, **metadata},
            "spec": {"selector": {"app": name}, "ports": [{"port": 80}]}}


def as_json(obj: Any) -> bytes:
    return json.dumps(obj).encode()


JSON = {"Content-Type": "application/json"}
YAML = {"Content-Type": "application/yaml"}


def assert_refused(admin, code: int, status: Any, expected: int, *words: str) -> None:
    """A Status of ``expected``, naming each of ``words``; nothing stored; still answering."""
    assert code == expected, status
    assert status["kind"] == "Status" and status["code"] == expected
    for word in words:
        assert word in status["message"] or word in json.dumps(status.get("details", {})), status
    assert admin.store.list("Service")[0] == []
    assert send(f"{admin.url}/version", "GET", timeout=5)[0] == 200


# -- YAML aliases, depth and size ---------------------------------------------------------------

ALIAS_BOMB = b"""\
apiVersion: v1
kind: Service
metadata: {name: bomb}
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
spec: {ports: [{port: 80}], x: *i}
"""


def test_a_yaml_alias_bomb_is_refused_before_it_is_expanded(admin):
    # 9**9 strings once expanded; the timeout bounds how long the refusal may take
    code, status = send(admin.url + SERVICES, body=ALIAS_BOMB, headers=YAML, timeout=5)
    assert_refused(admin, code, status, 400, "expands", "bytes")


def test_a_yaml_merge_key_bomb_and_a_recursive_alias_are_refused(admin):
    levels = ["a0: &a0 {k0: x, k1: x, k2: x, k3: x}"]
    for n in range(1, 30):
        levels.append(f"a{n}: &a{n} {{<<: [*a{n - 1}, *a{n - 1}], m{n}: y}}")
    bomb = "kind: Service\nmetadata: {name: merge}\n" + "\n".join(levels) + "\n"
    code, status = send(admin.url + SERVICES, body=bomb.encode(), headers=YAML, timeout=5)
    assert_refused(admin, code, status, 400, "expands")
    recursive = b"kind: Service\nmetadata: &m {name: loop, labels: {x: *m}}\n"
    code, status = send(admin.url + SERVICES, body=recursive, headers=YAML, timeout=5)
    assert_refused(admin, code, status, 400, "body")


def test_yaml_with_a_few_aliases_is_still_read(admin):
    body = (b"kind: Service\nmetadata: {name: web, labels: &l {app: web}}\n"
            b"spec: {selector: *l, ports: [{port: 80}]}\n")
    code, created = send(admin.url + SERVICES, body=body, headers=YAML)
    assert code == 201 and created["spec"]["selector"] == {"app": "web"}


@pytest.mark.parametrize("kind", ["json", "yaml-flow", "yaml-block"])
def test_a_body_nested_thousands_deep_is_400(admin, kind):
    depth = 10_000
    if kind == "json":
        body, headers = b'{"kind":"Service","x":' + b"[" * depth + b"]" * depth + b"}", JSON
    elif kind == "yaml-flow":
        body, headers = b"kind: Service\nx: " + b"[" * depth + b"]" * depth + b"\n", YAML
    else:
        lines = ["kind: Service", "x:"] + [" " * n + "- " for n in range(1, 1000)]
        body, headers = "\n".join(lines).encode(), YAML
    code, status = send(admin.url + SERVICES, body=body, headers=headers, timeout=10)
    assert_refused(admin, code, status, 400, "nested more than 100 levels")


def test_what_json_cannot_hold_is_400_naming_where_and_yaml_timestamps_stay_strings(admin):
    for body, headers, words in (
        (b'{"kind":"Service","metadata":{"name":"x"},"spec":{"a":NaN}}', JSON, ("NaN",)),
        (b'{"kind":"Service","metadata":{"name":"x"},"spec":{"a":[1e400]}}', JSON,
         ("spec.a[0]", "inf")),
        (b"kind: Service\nmetadata: {name: x}\nspec: {a: .nan}\n", YAML, ("spec.a", "nan")),
        (b"kind: Service\nmetadata: {name: x, labels: {a: !!binary aGk=}}\n", YAML,
         ("metadata.labels.a", "bytes")),
        (b"kind: Service\nmetadata: {name: x}\nspec: !!set {a, b}\n", YAML, ("spec", "set")),
    ):
        code, status = send(admin.url + SERVICES, body=body, headers=headers)
        assert_refused(admin, code, status, 400, *words)
    exported = (b"apiVersion: v1\nkind: Service\n"
                b"metadata: {name: web, creationTimestamp: 2024-05-01T10:00:00Z,\n"
                b"  annotations: {since: 2024-05-01}}\n"
                b"spec: {selector: {app: web}, ports: [{port: 80}]}\n")
    code, created = send(admin.url + SERVICES, body=exported, headers=YAML)
    assert code == 201 and created["metadata"]["annotations"] == {"since": "2024-05-01"}


def test_a_body_over_3_mib_is_413_whether_or_not_it_says_its_length(admin):
    filler = "x" * (admin_api.MAX_BODY_BYTES + 1)
    code, status = send(admin.url + SERVICES, body=as_json(service("big", labels={"a": filler})),
                        headers=JSON)
    assert_refused(admin, code, status, 413, "Request entity too large", "3145728")
    # a 50 MB Content-Length is refused before a byte of the body is read
    port = int(admin.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(b"POST " + SERVICES.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 50000000\r\n\r\n{")
        head = conn.recv(65536).decode()
    assert head.startswith("HTTP/1.1 413 ")
    assert '"reason": "RequestEntityTooLarge"' in head
    assert_refused(admin, 413, {"kind": "Status", "code": 413, "message": ""}, 413)


def test_bytes_that_are_not_utf8_are_400_and_other_charsets_415(admin):
    body = b'{"kind":"Service","metadata":{"name":"caf\xe9"}}'
    code, status = send(admin.url + SERVICES, body=body, headers=JSON)
    assert_refused(admin, code, status, 400, "not valid UTF-8", "0xe9", "offset 41")
    code, status = send(admin.url + SERVICES, body=body,
                        headers={"Content-Type": "application/json; charset=latin-1"})
    assert_refused(admin, code, status, 415, "charset 'latin-1'")
    code, status = send(admin.url + SERVICES, body=b"\xff\xfe{}",
                        headers={"Content-Type": "application/yaml; charset=x-unknown"})
    assert_refused(admin, code, status, 415, "x-unknown")


def test_metadata_that_is_not_an_object_is_422_naming_the_field(admin):
    for metadata, shown in (("web", '"web"'), ([1, 2], "[1, 2]"), (7, "7")):
        body = {"apiVersion": "v1", "kind": "Service", "metadata": metadata, "spec": {}}
        code, status = send(admin.url + SERVICES, body=as_json(body), headers=JSON)
        assert_refused(admin, code, status, 422, "metadata", shown, "must be an object")
        assert status["details"]["causes"][0]["field"] == "metadata"


def test_malformed_shapes_are_4xx_never_500(admin):
    shapes: list[Any] = [
        [], "text", None, 7,
        {"kind": "Service", "metadata": {"name": "x", "labels": "a=b"}},
        {"kind": "Service", "metadata": {"name": "x", "annotations": ["a"]}},
        {"kind": "Service", "metadata": {"name": "x", "annotations": {"a": 1}}},
        {"kind": "Service", "metadata": {"name": ["x"]}},
        {"kind": "Service", "metadata": {"name": "x"}, "spec": []},
        {"kind": "Service", "metadata": {"name": "x"}, "spec": {"ports": {"port": 80}}},
        {"kind": "Service", "metadata": {"name": "x"}, "spec": {"ports": [None]}},
        {"kind": "Service", "metadata": {"name": "x"}, "spec": {"selector": ["a"]}},
        {"kind": ["Service"], "metadata": {"name": "x"}},
        {"kind": "Service", "apiVersion": {"v": 1}, "metadata": {"name": "x"}},
    ]
    for shape in shapes:
        code, status = send(admin.url + SERVICES, body=as_json(shape), headers=JSON)
        assert 400 <= code < 500, (shape, status)
        assert status["kind"] == "Status"
    assert admin.store.list("Service")[0] == []


def test_annotations_over_256_kib_in_total_are_422_as_the_api_server(admin):
    half = "x" * (128 * 1024)
    body = service("big", annotations={"a": half, "b": half})  # 262,146 bytes with the keys
    code, status = send(admin.url + SERVICES, body=as_json(body), headers=JSON)
    assert_refused(admin, code, status, 422, "metadata.annotations",
                   "Too long: must have at most 262144 bytes")
    body = service("fits", annotations={"a": half, "b": half[:-2]})
    assert send(admin.url + SERVICES, body=as_json(body), headers=JSON)[0] == 201


# -- watch from the future ----------------------------------------------------------------------


def test_a_watch_from_a_future_resource_version_is_504_too_large(admin):
    admin.store.create(service("web"))
    code, status = send(f"{admin.url}/api/v1/services?watch=true&resourceVersion=99", "GET")
    assert code == 504 and status["reason"] == "Timeout"
    assert status["message"] == "Timeout: Too large resource version: 99, current: 1"
    assert status["details"]["causes"][0]["reason"] == "ResourceVersionTooLarge"
    configuration = client.Configuration()
    configuration.host = admin.url
    core = client.CoreV1Api(client.ApiClient(configuration))
    with pytest.raises(ApiException) as raised:
        for _ in watch.Watch().stream(core.list_service_for_all_namespaces,
                                      resource_version="99", timeout_seconds=2):
            pass
    assert raised.value.status == 504


# -- cross-site requests ------------------------------------------------------------------------


def test_a_web_page_cannot_write_simple_requests_are_415(admin):
    body = as_json(service("web"))
    for content_type in ("text/plain", "application/x-www-form-urlencoded",
                         "multipart/form-data; boundary=x", "text/plain; charset=utf-8"):
        code, status = send(admin.url + SERVICES, body=body,
                            headers={"Content-Type": content_type})
        assert_refused(admin, code, status, 415, "Content-Type", content_type.split(";")[0])


def test_a_foreign_origin_or_a_rebound_host_name_is_403(admin):
    body = as_json(service("web"))
    port = admin.url.rsplit(":", 1)[1]
    for headers, word in (
        ({"Origin": "https://evil.example"}, "Origin"),
        ({"Origin": "null"}, "Origin"),
        ({"Origin": f"http://127.0.0.1:{int(port) + 1}"}, "Origin"),
        ({"Host": f"evil.example:{port}"}, "evil.example"),
        # DNS rebinding: the page's own origin, its name now pointing at 127.0.0.1
        ({"Host": f"evil.example:{port}", "Origin": f"http://evil.example:{port}"},
         "evil.example"),
    ):
        code, status = send(admin.url + SERVICES, body=body, headers={**JSON, **headers})
        assert_refused(admin, code, status, 403, word)
        code, status = send(f"{admin.url}/api/v1/services", "GET", headers=headers)
        assert code == 403 and status["reason"] == "Forbidden"
    for headers in ({"Host": f"localhost:{port}"}, {"Host": f"[::1]:{port}"},
                    {"Host": f"127.0.0.1:{port}", "Origin": f"http://127.0.0.1:{port}"},
                    {"Host": socket.gethostname()}):
        assert send(f"{admin.url}/api/v1/services", "GET", headers=headers)[0] == 200


# -- bounded memory -----------------------------------------------------------------------------


def test_a_watcher_that_never_reads_is_ended_with_410_once_it_holds_too_many_bytes():
    async def main() -> None:
        with Store(None) as store:
            stalled = store.watch("Service", resource_version="0")
            reading = store.watch("Service", resource_version="0")
            events: list[dict[str, Any]] = []

            async def read() -> None:
                async for event in reading:
                    events.append(event)

            reader = asyncio.create_task(read())
            blob = "x" * 200_000
            obj = store.create(service("big", annotations={"blob": blob}))
            writes = 1 + 2 * MAX_PENDING_BYTES // (2 * len(blob)) + 4
            for n in range(writes):
                obj["metadata"]["annotations"]["blob"] = blob[:-1] + str(n % 10)
                obj = store.update(obj)
                await asyncio.sleep(0)
            assert stalled.overflowed and stalled.pending_bytes == 0  # let go at once
            assert not reading.overflowed
            error = await anext(stalled)
            assert error["type"] == "ERROR"
            assert (error["object"]["code"], error["object"]["reason"]) == (410, "Expired")
            assert "too old resource version" in error["object"]["message"]
            with pytest.raises(StopAsyncIteration):
                await anext(stalled)
            reading.close()
            await asyncio.wait_for(reader, 5)
            assert len(events) == 1 + writes

    asyncio.run(main())


def test_a_watcher_ended_for_falling_behind_gets_its_410_through_a_field_selector(
        admin, monkeypatch):
    from lbcore.runtime import store as store_module

    monkeypatch.setattr(store_module, "MAX_PENDING", 0)  # the first change is one too many
    url = (f"{admin.url}/api/v1/namespaces/default/services?watch=true&resourceVersion=0"
           "&fieldSelector=metadata.name%3Dweb&timeoutSeconds=10")
    with urllib.request.urlopen(url, timeout=10) as response:
        admin.store.create(service("web"))
        events = [json.loads(line) for line in response if line.strip()]
    assert [e["type"] for e in events] == ["ERROR"]
    assert (events[0]["object"]["code"], events[0]["object"]["reason"]) == (410, "Expired")


@pytest.mark.parametrize("where", ["memory", "file"])
def test_lists_of_many_objects_are_answered_while_the_loop_stays_free(where, serve_admin,
                                                                       tmp_path):
    """12 lists and 4 watches from no resourceVersion of 3,000 pods (the benchmark uses 50,000)
    while small requests and writes are answered."""
    store = Store(None if where == "memory" else tmp_path / "lbcore.db")
    admin = serve_admin(store)
    for n in range(3000):
        store.create({"apiVersion": "v1", "kind": "Pod",
                      "metadata": {"name": f"p{n}", "namespace": "default",
                                   "labels": {"app": "web", "n": str(n % 7)}},
                      "spec": {"containers": [{"name": "c", "image": "x" * 300}]}})
    answers: list[int] = []
    errors: list[BaseException] = []

    def list_pods(query: str) -> None:
        try:
            code, listed = send(f"{admin.url}/api/v1/pods{query}", "GET", timeout=60)
            answers.append(len(listed["items"]))
        except BaseException as exc:  # reported below
            errors.append(exc)

    def watch_pods() -> None:  # a watch from no resourceVersion starts with the whole list
        try:
            url = f"{admin.url}/api/v1/pods?watch=true&timeoutSeconds=2"
            with urllib.request.urlopen(url, timeout=60) as response:
                added = [line for line in response if b'"type":"ADDED"' in line]
            answers.append(-len(added))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=list_pods, args=(q,))
               for q in ["", "?labelSelector=n%3D3", "?fieldSelector=metadata.name%3Dp7"] * 4]
    threads += [threading.Thread(target=watch_pods) for _ in range(4)]
    for thread in threads:
        thread.start()
    # meanwhile the server answers small requests and writes
    for n in range(5):
        assert send(f"{admin.url}/version", "GET", timeout=10)[0] == 200
        code, _ = send(admin.url + SERVICES, body=as_json(service(f"s{n}")), headers=JSON,
                       timeout=10)
        assert code == 201
    for thread in threads:
        thread.join(60)
    assert not errors
    assert sorted(answers) == sorted([3000, 3000 // 7 + 1, 1, -3000] * 4)
    code, listed = send(f"{admin.url}/api/v1/services", "GET")
    assert listed["metadata"]["resourceVersion"] == "3005" and len(listed["items"]) == 5
    assert listed["items"] == store.list("Service")[0]
    admin.stop()
    store.close()


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_a_stalled_watcher_does_not_grow_the_daemons_memory(tmp_path):
    """``lbcore run`` (own data dir, free loopback port); a watcher that never reads while 300
    writes of a 200 KB object go by: 120 MB of changes that an unbounded backlog would hold.
    The daemon's resident memory grows by far less, and it closes the watcher's connection
    rather than keep it until the watch's timeout."""
    data_dir = tmp_path / "data"
    config = tmp_path / "lbcore.yaml"
    config.write_text(json.dumps({"admin_address": "127.0.0.1:0", "data_dir": str(data_dir),
                                  "frontends": []}))
    env = {k: v for k, v in os.environ.items() if k != "LBCORE_SERVER"}
    with open(tmp_path / "daemon.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "lbcore", "run", "--config", str(config)],
                                env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        address = data_dir / "admin-address"
        for _ in range(300):
            if address.exists() or proc.poll() is not None:
                break
            time.sleep(0.05)
        assert address.exists(), (tmp_path / "daemon.log").read_text()
        host, port = address.read_text().strip().rsplit("/", 1)[1].rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        blob = "x" * 200_000

        def write(n: int) -> None:
            obj = service("big", annotations={"blob": blob[:-1] + str(n % 10)})
            conn.request("PUT" if n else "POST", SERVICES + ("/big" if n else ""),
                         body=as_json(obj), headers=JSON)
            response = conn.getresponse()
            response.read()
            assert response.status in (200, 201)

        for n in range(50):  # warm up: the store, the allocator, the first pages of SQLite
            write(n)
        stalled = socket.socket()
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.settimeout(30)
        stalled.connect((host, int(port)))
        stalled.sendall(f"GET /api/v1/services?watch=true&resourceVersion=50 HTTP/1.1\r\n"
                        f"Host: {host}\r\n\r\n".encode())
        before = _rss_bytes(proc.pid)
        for n in range(50, 350):
            write(n)
        grown = _rss_bytes(proc.pid) - before
        # an unbounded backlog holds 300 x 400 KB (it grew by 120 MB when measured, the bounded
        # one by 5 MB); the bound is 16 MiB of JSON
        assert grown < 60 * 1024 * 1024, f"the daemon grew by {grown} bytes"
        # the daemon closed the connection (it does not hold it until timeoutSeconds, 1800 s
        # here): reading what was queued ends, within the socket's 30 s timeout
        ended = False
        for _ in range(100_000):
            try:
                if not stalled.recv(1 << 20):
                    ended = True
                    break
            except ConnectionResetError:
                ended = True
                break
        assert ended
        assert "its client does not read; closing the connection" in (
            tmp_path / "daemon.log").read_text()
        stalled.close()
        conn.close()
    finally:
        proc.terminate()
        proc.wait(20)
