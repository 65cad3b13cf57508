"""nft scripts run in this process through libnftables, the library the ``nft`` command is built on.

A partial sync of a large table is a few lines of script; starting ``ip netns exec NAME nft -f -``
for it costs 15 to 20 ms before nft reads a byte, which is a fifth of the whole sync. A
:class:`NftContext` keeps one library context open instead. A network namespace belongs to a
thread, not to a process, so a context for a named namespace lives in a thread of its own that
entered the namespace (``setns(2)``) before creating it; every script runs in that thread.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import queue
import threading
from concurrent.futures import Future

CLONE_NEWNET = 0x40000000
LIBRARY = "libnftables.so.1"


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


class NftContext:
    """One libnftables context in ``netns`` (None: this process's namespace).

    :meth:`run` takes what ``nft -f -`` takes and returns ``(status, output, error text)``.
    Scripts run one at a time, each as nft runs a file: one transaction.
    """

    def __init__(self, netns: str | None = None):
        self.netns = netns
        self._lib = _load()
        self._jobs: queue.SimpleQueue[tuple[str, Future[tuple[int, str, str]]] | None] = queue.SimpleQueue()
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
            ctx = lib.nft_ctx_new(0)
            if not ctx:
                raise NftUnavailable("nft_ctx_new failed")
            lib.nft_ctx_buffer_output(ctx)
            lib.nft_ctx_buffer_error(ctx)
        except BaseException as exc:  # noqa: BLE001 - handed to the thread that waits
            ready.set_exception(exc)
            return
        ready.set_result(None)
        try:
            while (job := self._jobs.get()) is not None:
                script, done = job
                if not done.set_running_or_notify_cancel():
                    continue
                status = lib.nft_run_cmd_from_buffer(ctx, script.encode())
                out = (lib.nft_ctx_get_output_buffer(ctx) or b"").decode(errors="replace")
                err = (lib.nft_ctx_get_error_buffer(ctx) or b"").decode(errors="replace")
                done.set_result((status, out, err))
        finally:
            lib.nft_ctx_free(ctx)

    def run(self, script: str, timeout: float | None = None) -> tuple[int, str, str]:
        """Run ``script``; raises ``TimeoutError`` when it has not finished within ``timeout``."""
        if not self._thread.is_alive():
            raise NftUnavailable("the libnftables context is closed")
        done: Future[tuple[int, str, str]] = Future()
        self._jobs.put((script, done))
        return done.result(timeout)

    def close(self) -> None:
        """Free the context once the scripts already queued have run."""
        if self._thread.is_alive():
            self._jobs.put(None)
            self._thread.join()
