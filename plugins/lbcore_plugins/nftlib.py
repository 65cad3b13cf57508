"""nft scripts run in this process through libnftables, the library the ``nft`` command is built on.

A partial sync of a large table is a few lines of script; starting ``ip netns exec NAME nft -f -``
for it costs 15 to 20 ms before nft reads a byte, which is a fifth of the whole sync. A
:class:`NftContext` keeps one library context open instead. A network namespace belongs to a
thread, not to a process, so a context for a named namespace lives in a thread of its own that
entered the namespace (``setns(2)``) before creating it; every script runs in that thread.

:meth:`NftContext.delete_unreferenced` deletes chains and sets by name with one nf_tables netlink
batch of its own: nft 1.0.6 reads every chain of the ruleset before any ``delete`` (0.15 to 0.4 s
with 61,000 chains), the kernel needs only the names.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import queue
import socket
import struct
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from typing import Any

CLONE_NEWNET = 0x40000000
LIBRARY = "libnftables.so.1"

# linux/netlink.h, linux/netfilter/nfnetlink.h, linux/netfilter/nf_tables.h
NETLINK_NETFILTER = 12
NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP = 0x1, 0x4, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END = 16, 17
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_DELCHAIN, NFT_MSG_DELSET, NFT_MSG_DELSETELEM = 5, 11, 14
NLA_F_NESTED = 0x8000
# NFTA_SET_ELEM_LIST_{TABLE,SET,ELEMENTS}, NFTA_LIST_ELEM, NFTA_SET_ELEM_KEY, NFTA_DATA_VALUE
ELEM_LIST_TABLE, ELEM_LIST_SET, ELEM_LIST_ELEMENTS, LIST_ELEM, ELEM_KEY, DATA_VALUE = 1, 2, 3, 1, 1, 1
PROTOCOLS = {"tcp": 6, "udp": 17, "sctp": 132}
NFT_MSG_NEWRULE, NFT_MSG_GETRULE = 6, 7
NFTA_RULE_TABLE, NFTA_RULE_CHAIN = 1, 2
NFTA_TABLE, NFTA_CHAIN_NAME, NFTA_SET_NAME = 1, 3, 2  # NFTA_CHAIN_TABLE == NFTA_SET_TABLE == 1
FAMILIES = {"inet": 1, "ip": 2, "ip6": 10}


class NftUnavailable(OSError):
    """libnftables cannot be loaded, or the namespace cannot be entered."""


def _load() -> ctypes.CDLL:
    try:
        lib = ctypes.CDLL(LIBRARY)
    except OSError as exc:
        raise NftUnavailable(f"{LIBRARY}: {exc}") from exc
    lib.nft_ctx_new.restype = ctypes.c_void_p
    lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
    lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
    lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
    lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
    lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
    lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    return lib


def _enter_netns(netns: str) -> None:
    """Move the calling thread into the named network namespace."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    fd = os.open(f"/run/netns/{netns}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise NftUnavailable(err, f"setns into network namespace {netns!r}: {os.strerror(err)}")
    finally:
        os.close(fd)


def _attr(kind: int, text: str) -> bytes:
    data = text.encode() + b"\0"
    return struct.pack("=HH", 4 + len(data), kind) + data + b"\0" * (-len(data) % 4)


def _message(kind: int, flags: int, seq: int, family: int, res_id: int, payload: bytes = b"") -> bytes:
    body = struct.pack("=BBH", family, 0, socket.htons(res_id)) + payload
    return struct.pack("=IHHII", 16 + len(body), kind, flags, seq, 0) + body


def deletion_batch(family: str, table: str, chains: Iterable[str], sets: Iterable[str], seq: int) -> tuple[bytes, int]:
    """One nf_tables batch that deletes ``chains`` then ``sets`` of ``family table``, every
    message asking for an acknowledgement; returns it and how many messages it holds."""
    fam = FAMILIES[family]
    parts = [_message(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, seq, 0, NFNL_SUBSYS_NFTABLES)]
    for kind, attr, names in ((NFT_MSG_DELCHAIN, NFTA_CHAIN_NAME, chains), (NFT_MSG_DELSET, NFTA_SET_NAME, sets)):
        for name in names:
            seq += 1
            payload = _attr(NFTA_TABLE, table) + _attr(attr, name)
            parts.append(_message(NFNL_SUBSYS_NFTABLES << 8 | kind, NLM_F_REQUEST | NLM_F_ACK, seq, fam, 0, payload))
    parts.append(_message(NFNL_MSG_BATCH_END, NLM_F_REQUEST, seq + 1, 0, NFNL_SUBSYS_NFTABLES))
    return b"".join(parts), len(parts) - 2


def _nested(kind: int, payload: bytes) -> bytes:
    return struct.pack("=HH", 4 + len(payload), kind | NLA_F_NESTED) + payload + b"\0" * (-len(payload) % 4)


def element_key(text: str) -> bytes:
    """The kernel's bytes of a concatenated set key as nft writes it (``10.0.0.1 . tcp . 80``):
    each part (an address, a protocol name, a port) in network order, padded to 4 bytes."""
    out = b""
    for part in text.split(" . "):
        part = part.strip()
        if part in PROTOCOLS:
            value = bytes([PROTOCOLS[part]])
        elif part.isdigit():
            value = struct.pack("!H", int(part))
        else:
            value = socket.inet_pton(socket.AF_INET6 if ":" in part else socket.AF_INET, part)
        out += value + b"\0" * (-len(value) % 4)
    return out


def element_deletion_batch(
    family: str, table: str, elements: Iterable[tuple[str, str]], seq: int
) -> tuple[bytes, int]:
    """One nf_tables batch that deletes ``elements`` ((set or map name, key text as nft writes
    it)) of ``family table``, one message per set; returns it and how many messages it holds."""
    fam = FAMILIES[family]
    by_set: dict[str, list[bytes]] = {}
    for name, key in elements:
        value = element_key(key)
        data = struct.pack("=HH", 4 + len(value), DATA_VALUE) + value
        by_set.setdefault(name, []).append(_nested(LIST_ELEM, _nested(ELEM_KEY, data)))
    parts = [_message(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, seq, 0, NFNL_SUBSYS_NFTABLES)]
    for name, items in by_set.items():
        seq += 1
        payload = _attr(ELEM_LIST_TABLE, table) + _attr(ELEM_LIST_SET, name) + _nested(ELEM_LIST_ELEMENTS, b"".join(items))
        parts.append(_message(NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_DELSETELEM, NLM_F_REQUEST | NLM_F_ACK, seq, fam, 0, payload))
    parts.append(_message(NFNL_MSG_BATCH_END, NLM_F_REQUEST, seq + 1, 0, NFNL_SUBSYS_NFTABLES))
    return b"".join(parts), len(parts) - 2


def _send_batch(sock: socket.socket, batch: bytes, acks: int) -> None:
    """Send ``batch`` and wait for its ``acks`` acknowledgements; the kernel applies all of it
    or, when one message fails, nothing. Raises ``OSError`` with the first error."""
    sock.send(batch)
    first_error = 0
    while acks:
        try:
            data = sock.recv(65536)
        except TimeoutError:
            if first_error:  # an aborted batch need not acknowledge every message
                break
            raise
        offset = 0
        while offset + 16 <= len(data):
            length, kind = struct.unpack_from("=IH", data, offset)
            if kind == NLMSG_ERROR:
                acks -= 1
                code = -struct.unpack_from("=i", data, offset + 16)[0]
                first_error = first_error or code
            offset += max(16, (length + 3) & ~3)
    if first_error:
        raise OSError(first_error, os.strerror(first_error))


def _count_dump(sock: socket.socket, kind: int) -> int:
    """Read a netlink dump to its end; how many of its messages are of ``kind``. An error
    message raises ``OSError``."""
    count = 0
    while True:
        data = sock.recv(1 << 20)
        offset = 0
        while offset + 16 <= len(data):
            length, message = struct.unpack_from("=IH", data, offset)
            if message == NLMSG_DONE:
                return count
            if message == NLMSG_ERROR:
                code = -struct.unpack_from("=i", data, offset + 16)[0]
                if code:
                    raise OSError(code, os.strerror(code))
            elif message == kind:
                count += 1
            offset += max(16, (length + 3) & ~3)


class NftContext:
    """One libnftables context in ``netns`` (None: this process's namespace).

    :meth:`run` takes what ``nft -f -`` takes and returns ``(status, output, error text)``.
    Scripts run one at a time, each as nft runs a file: one transaction.
    """

    def __init__(self, netns: str | None = None):
        self.netns = netns
        self._lib = _load()
        self._ctx: int | None = None
        self._sock: socket.socket | None = None
        self._seq = 0
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]] | None] = queue.SimpleQueue()
        ready: Future[None] = Future()
        self._thread = threading.Thread(
            target=self._serve, args=(ready,), name=f"nft-{netns or 'host'}", daemon=True
        )
        self._thread.start()
        ready.result()  # raises what opening the context raised

    def _serve(self, ready: Future[None]) -> None:
        lib = self._lib
        try:
            if self.netns is not None:
                _enter_netns(self.netns)
            self._ctx = lib.nft_ctx_new(0)
            if not self._ctx:
                raise NftUnavailable("nft_ctx_new failed")
            lib.nft_ctx_buffer_output(self._ctx)
            lib.nft_ctx_buffer_error(self._ctx)
        except BaseException as exc:  # noqa: BLE001 - handed to the thread that waits
            ready.set_exception(exc)
            return
        ready.set_result(None)
        try:
            while (job := self._jobs.get()) is not None:
                work, done = job
                if done.set_running_or_notify_cancel():
                    try:
                        done.set_result(work())
                    except BaseException as exc:  # noqa: BLE001 - handed to the caller
                        done.set_exception(exc)
        finally:
            lib.nft_ctx_free(self._ctx)
            if self._sock is not None:
                self._sock.close()

    def _call(self, work: Callable[[], Any], timeout: float | None) -> Any:
        if not self._thread.is_alive():
            raise NftUnavailable("the libnftables context is closed")
        done: Future[Any] = Future()
        self._jobs.put((work, done))
        return done.result(timeout)

    def run(self, script: str, timeout: float | None = None) -> tuple[int, str, str]:
        """Run ``script``; raises ``TimeoutError`` when it has not finished within ``timeout``."""

        def work() -> tuple[int, str, str]:
            lib = self._lib
            status = lib.nft_run_cmd_from_buffer(self._ctx, script.encode())
            out = (lib.nft_ctx_get_output_buffer(self._ctx) or b"").decode(errors="replace")
            err = (lib.nft_ctx_get_error_buffer(self._ctx) or b"").decode(errors="replace")
            return status, out, err

        return self._call(work, timeout)

    def delete_unreferenced(
        self, family: str, table: str, chains: Iterable[str], sets: Iterable[str], timeout: float = 60.0
    ) -> None:
        """Delete empty ``chains`` and ``sets`` of ``family table`` that nothing refers to, in one
        batch (all or none); raises ``OSError`` with the kernel's error (``EBUSY``: still in use)."""
        chains, sets = list(chains), list(sets)
        if chains or sets:
            self._batch(lambda seq: deletion_batch(family, table, chains, sets, seq), timeout)

    def _batch(self, make: Callable[[int], tuple[bytes, int]], timeout: float) -> None:
        """Send the batch ``make(first sequence number)`` returns from the context's thread
        (whose netlink socket belongs to the namespace) and wait for every acknowledgement."""

        def work() -> None:
            if self._sock is None:  # opened here, so it belongs to the namespace
                self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
                self._sock.bind((0, 0))
            self._sock.settimeout(timeout)
            batch, acks = make(self._seq)
            self._seq += acks + 2
            _send_batch(self._sock, batch, acks)

        self._call(work, None)

    def delete_elements(
        self, family: str, table: str, elements: Iterable[tuple[str, str]], timeout: float = 60.0
    ) -> None:
        """Delete ``elements`` ((set or map name, key as nft writes it)) of ``family table`` in
        one batch (all or none); raises ``OSError`` with the kernel's error (``ENOENT``: an
        element is not there). nft would first read every chain of the ruleset."""
        elements = list(elements)
        if elements:
            self._batch(lambda seq: element_deletion_batch(family, table, elements, seq), timeout)

    def count_rules(self, family: str, table: str, chain: str, timeout: float = 60.0) -> int:
        """How many rules chain ``chain`` of ``family table`` holds (0 when the table or the
        chain is gone), from one netlink dump the kernel filters by table and chain: a listing
        through the library would first read every set element of the table (1.8 s for a
        ``maps`` table of 5,000 services, against a millisecond for this)."""

        def work() -> int:
            with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER) as sock:
                sock.bind((0, 0))
                sock.settimeout(timeout)
                self._seq += 1
                payload = _attr(NFTA_RULE_TABLE, table) + _attr(NFTA_RULE_CHAIN, chain)
                sock.send(_message(NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_GETRULE,
                                   NLM_F_REQUEST | NLM_F_DUMP, self._seq, FAMILIES[family], 0, payload))
                return _count_dump(sock, NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWRULE)

        return int(self._call(work, None))

    def close(self) -> None:
        """Free the context once the work already queued has run."""
        if self._thread.is_alive():
            self._jobs.put(None)
            self._thread.join()
