"""Where ``lbcore run`` keeps its bytes: a daemon in this process, on a store file, walked by holder.

The daemon (:class:`lbcore.runtime.daemon.Daemon`, with the frontends of ``--frontends``) starts
on a copy of the store file given, runs until it has synced every service and the endpoints
controller has reconciled every one, then every structure it keeps is walked from its holder,
in the order of ``HOLDERS``: each Python object is counted once (``sys.getsizeof``), under the
first holder that reaches it, so that an object two holders share is counted with the first
(the parsed objects the store's parse cache shares with the endpoints controller and
``ClusterState``, for instance). C allocations that objects do not report (the socket engine's
tables, SQLite's page cache) are not counted; the RSS beside the walk's total says how much they
and the allocator's overhead are. Before the walk it reports the two allocators (Python's
small-object arenas: bytes in use, in free blocks, in unused pools; glibc's heaps: in use and
free), then what a full collection finds among the objects the daemon froze at start and the
RSS after it and after ``malloc_trim``: where the bytes beside the walk are.

    python3 benchmarks/e2e/memory_profile.py /work/s19seeds/seed-1000.db --services 1000

The walk takes a few seconds per 100,000 objects; no tracemalloc, so the daemon runs at its
normal speed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import gc
import json
import os
import re
import shutil
import sys
import tempfile
import time
import types
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml
from programming_latency import FRONTENDS, KERNEL, all_frontends, network_namespace

_SKIP = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.MethodType,
         types.CodeType, types.FrameType, asyncio.AbstractEventLoop)


class Walker:
    """Deep sizes of object graphs, each object counted once across every walk."""

    def __init__(self, stop: Iterable[Any] = ()):
        self.seen: set[int] = {id(o) for o in stop}
        self.objects = 0

    def size(self, *roots: Any) -> int:
        total = 0
        stack = list(roots)
        seen = self.seen
        while stack:
            obj = stack.pop()
            if id(obj) in seen or isinstance(obj, _SKIP):
                continue
            seen.add(id(obj))
            self.objects += 1
            total += sys.getsizeof(obj)
            if isinstance(obj, str | bytes | int | float | bool | type(None)):
                continue
            stack.extend(gc.get_referents(obj))
        return total


def rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def pymalloc_stats() -> dict[str, int]:
    """Python's small-object allocator (objects up to 512 bytes), from ``sys._debugmallocstats``:
    the bytes of its arenas, the bytes in their blocks in use and free, and in their unused
    pools. An arena goes back to the system only when none of its blocks is in use."""
    import os

    with tempfile.TemporaryFile() as out:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(out.fileno(), 2)
        try:
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        out.seek(0)
        text = out.read().decode()
    found = {}
    for key, pattern in (("arenas", r"# arenas allocated current\s*=\s*([\d,]+)"),
                         ("in_use", r"# bytes in allocated blocks\s*=\s*([\d,]+)"),
                         ("free_blocks", r"# bytes in available blocks\s*=\s*([\d,]+)"),
                         ("unused_pools", r"unused pools \* \d+ bytes\s*=\s*([\d,]+)")):
        match = re.search(pattern, text)
        found[key] = int(match.group(1).replace(",", "")) if match else 0
    found["arena_bytes"] = found["arenas"] * 2**20
    return found


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


def glibc_stats() -> dict[str, int]:
    """The C allocator's view (glibc's ``mallinfo2``, every arena): the bytes of its heaps,
    of its own mmaps, in use and free inside the heaps; empty without glibc."""
    try:
        mallinfo2 = ctypes.CDLL(None).mallinfo2
    except (AttributeError, OSError):
        return {}
    mallinfo2.restype = _MallInfo2
    info = mallinfo2()
    return {"heap": info.arena, "mmapped": info.hblkhd, "in_use": info.uordblks,
            "free": info.fordblks}


def allocators() -> dict[str, Any]:
    """Where the RSS beside the walk is: the two allocators, then what the cyclic collector
    frees of the objects the daemon froze at start (garbage frozen with them), and the RSS
    after that collection and after ``malloc_trim``."""
    from lbcore.runtime.daemon import give_back_free_memory

    found: dict[str, Any] = {"rss": rss(), "pymalloc": pymalloc_stats(), "glibc": glibc_stats()}
    found["frozen"] = gc.get_freeze_count()
    gc.unfreeze()
    found["frozen_garbage"] = gc.collect()
    found["rss_after_collect"] = rss()
    give_back_free_memory()
    found["rss_after_trim"] = rss()
    found["pymalloc_after"] = pymalloc_stats()
    found["glibc_after"] = glibc_stats()
    return found


def holders(daemon: Any) -> list[tuple[str, Callable[[], list[Any]]]]:
    """(label, the roots it holds), in attribution order."""
    store = daemon.store
    ctl = daemon.endpoints_controller
    state = daemon.state
    table = state.table

    def parsed() -> list[Any]:  # what the parse cache holds, by kind then key
        return [obj for objects in store._parsed.values() for obj in objects.values()]

    def parsed_fields() -> list[Any]:
        # the parsed objects without their bodies, counted first (their key strings with them)
        return parsed()

    def bodies() -> list[Any]:
        # the Kubernetes-shaped dict (``raw``), or its JSON text (``body``)
        return [getattr(obj, "body", None) or obj.raw for obj in parsed()]

    def cache_keys() -> list[Any]:
        return [store._parsed]

    return [
        ("parsed objects: their bodies (dict or JSON text)", bodies),
        ("parsed objects: their fields", parsed_fields),
        ("store: parse cache (keys, versions)", cache_keys),
        ("endpoints controller: stored slices", lambda: [ctl._slices]),
        ("endpoints controller: stored Endpoints", lambda: [ctl._endpoints]),
        ("endpoints controller: selector index", lambda: [ctl._index]),
        ("endpoints controller: pod and service tables", lambda: [ctl._pods, ctl._services]),
        ("ClusterState: service table's objects", lambda: [table._objects]),
        ("ClusterState: endpoint tracker", lambda: [table._tracker]),
        ("ClusterState: ports, change log", lambda: [
            table._port_infos, table._ports_map, table._log, table._changed_at, table._carried,
            table._dirty]),
        ("snapshot", lambda: [state.snapshot]),
        # the store before the frontends, whose RuntimeContext reaches it
        ("store: the rest (watches, overlay, shared lists)", lambda: [store]),
        ("frontends", lambda: list(daemon.frontends.values())),
        ("daemon: the rest (events, probes, route status, admin API)", lambda: [daemon]),
    ]


async def run(config: Any, services: int, timeout: float) -> dict[str, Any]:
    from lbcore.runtime.daemon import Daemon

    daemon = Daemon(config)
    started = time.monotonic()
    await daemon.start()
    try:
        state = daemon.state
        synced: list[tuple[float, int]] = []  # (seconds since start, table version) per sync
        sync = state.sync

        async def recorded() -> dict[str, str]:
            version = state.table.version
            errors = await sync()
            if not errors:
                synced.append((time.monotonic() - started, version))
            return errors

        state.sync = recorded  # type: ignore[method-assign]
        listed_at = None
        while time.monotonic() - started < timeout:
            if listed_at is None and daemon.source.synced.is_set():
                listed_at = (time.monotonic() - started, state.table.version)
            if (listed_at is not None and synced and synced[-1][1] >= listed_at[1]
                    and len(state.snapshot.services) >= services):
                break
            await asyncio.sleep(0.05)
        synced_at = synced[-1][0] if synced else float("nan")
        while (not daemon.endpoints_controller.synced.is_set()
               and time.monotonic() - started < timeout):
            await asyncio.sleep(0.2)
        controller_at = time.monotonic() - started
        await asyncio.sleep(2)
        gc.collect()
        rss_now = rss()
        kept = allocators()  # before the walk, whose own bytes would be counted
        walker = Walker(stop=[daemon.config, asyncio.get_running_loop()])
        rows = {}
        began = time.monotonic()
        for label, roots in holders(daemon):
            rows[label] = walker.size(*roots())
        return {"services": services, "synced_seconds": synced_at,
                "listed_seconds": listed_at[0] if listed_at else float("nan"),
                "controller_seconds": controller_at, "rss": rss_now,
                "walked_bytes": sum(rows.values()), "objects": walker.objects,
                "walk_seconds": time.monotonic() - began, "holders": rows,
                "allocators": kept}
    finally:
        await daemon.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("db", type=Path, help="a store file (a seed of programming_latency.py)")
    p.add_argument("--services", type=int, required=True, help="services the store holds")
    p.add_argument("--frontends", default="socket",
                   help="comma-separated names of programming_latency.py (socket, nftables-maps, "
                        "nftables-cascade, iptables); the kernel ones as root, in a network "
                        "namespace of their own")
    p.add_argument("--service-cidr", default="127.55.0.0/16",
                   help="the CIDR the seed's ClusterIPs were given (programming_latency.py's)")
    p.add_argument("--timeout", type=float, default=900.0)
    p.add_argument("--json", action="store_true", help="print one JSON line, not a table")
    args = p.parse_args(argv)

    from lbcore.runtime.config import load_config
    from lbcore.runtime.logs import setup_logging

    setup_logging("json", "warning")
    names = tuple(name for name in args.frontends.split(",") if name)
    unknown = [name for name in names if name not in FRONTENDS]
    if unknown:
        p.error(f"--frontends: {', '.join(unknown)}: not one of {', '.join(FRONTENDS)}")
    with tempfile.TemporaryDirectory(prefix="lbcore-memprof-") as tmp, contextlib.ExitStack() as stack:
        data = Path(tmp) / "data"
        data.mkdir()
        shutil.copyfile(args.db, data / "lbcore.db")
        netns = None
        if any(name in KERNEL for name in names):
            if os.geteuid() != 0:
                p.error(f"--frontends: {args.frontends}: the kernel frontends need root")
            netns = stack.enter_context(network_namespace(f"lbcore-memprof-{os.getpid()}"))
        frontends = all_frontends(netns, names)
        path = Path(tmp) / "lbcore.yaml"
        path.write_text(yaml.safe_dump({
            "admin_address": "127.0.0.1:0", "data_dir": str(data),
            "service_cidr": args.service_cidr, "node_name": "bench-node",
            "frontends": frontends}))
        result = asyncio.run(run(load_config(str(path)), args.services, args.timeout))
    if args.json:
        print(json.dumps(result))
        return 0
    objects = args.services * 11
    print(f"{args.services} services, {objects - args.services} pods: source listed after "
          f"{result['listed_seconds']:.1f} s, its first full sync done after "
          f"{result['synced_seconds']:.1f} s, the endpoints controller's first pass after "
          f"{result['controller_seconds']:.1f} s; RSS {result['rss'] / 2**20:.0f} MiB, walked "
          f"{result['walked_bytes'] / 2**20:.0f} MiB in {result['objects']:,} Python objects "
          f"({result['walk_seconds']:.1f} s)")
    print("| holder | MiB | bytes per object |")
    print("|---|---:|---:|")
    for label, size in result["holders"].items():
        print(f"| {label} | {size / 2**20:.1f} | {size / objects:,.0f} |")
    print(f"| walked, in all | {result['walked_bytes'] / 2**20:.1f} | "
          f"{result['walked_bytes'] / objects:,.0f} |")
    kept = result["allocators"]

    def mib(n: int) -> str:
        return f"{n / 2**20:,.0f} MiB"

    for when, py, c in (("before the walk", kept["pymalloc"], kept["glibc"]),
                        ("after that collection and malloc_trim", kept["pymalloc_after"],
                         kept["glibc_after"])):
        print(f"pymalloc {when}: {py['arenas']:,} arenas ({mib(py['arena_bytes'])}), blocks in use "
              f"{mib(py['in_use'])}, free blocks {mib(py['free_blocks'])}, unused pools "
              f"{mib(py['unused_pools'])}")
        if c:
            print(f"glibc malloc {when}: heaps {mib(c['heap'])} (in use {mib(c['in_use'])}, free "
                  f"{mib(c['free'])}), its own mmaps {mib(c['mmapped'])}")
    print(f"frozen at start: {kept['frozen']:,} objects, of which a full collection frees "
          f"{kept['frozen_garbage']:,}; RSS {mib(kept['rss'])} -> {mib(kept['rss_after_collect'])} "
          f"after it -> {mib(kept['rss_after_trim'])} after malloc_trim")
    return 0


if __name__ == "__main__":
    sys.exit(main())
