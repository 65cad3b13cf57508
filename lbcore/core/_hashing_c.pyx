# cython: language_level=3, embedsignature=True
"""Stable 64-bit hashing of keys with XXH3 (vendored xxHash, BSD-2-Clause, lbcore/include/xxhash).

The same key gives the same hash in every process, on every run and every little-endian machine,
which Python's ``hash()`` does not promise.
"""

from libc.stdint cimport uint64_t
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_AsUTF8AndSize


cdef uint64_t hash_object(object key) except? 0:
    """Hash a str (its UTF-8), bytes, bytearray/memoryview, or int in -2**63..2**64-1."""
    cdef const char* data
    cdef Py_ssize_t size
    cdef const unsigned char[::1] view
    if isinstance(key, str):
        data = PyUnicode_AsUTF8AndSize(key, &size)
        return XXH3_64bits(data, <size_t>size)
    if isinstance(key, bytes):
        return XXH3_64bits(PyBytes_AS_STRING(key), <size_t>PyBytes_GET_SIZE(key))
    if isinstance(key, int) and not isinstance(key, bool):
        if key < 0:
            if key < -(1 << 63):
                raise OverflowError(f"key {key} is not in -2**63..2**64-1")
            key += 1 << 64
        if key >= (1 << 64):
            raise OverflowError(f"key {key} is not in -2**63..2**64-1")
        return hash_u64(<uint64_t>key)
    if isinstance(key, (bytearray, memoryview)):
        view = memoryview(key).cast("B")
        if view.shape[0] == 0:
            return XXH3_64bits(NULL, 0)
        return XXH3_64bits(&view[0], <size_t>view.shape[0])
    raise TypeError(f"key must be str, bytes or int, not {type(key).__name__}")


def hash64(key) -> int:
    """Return the stable 64-bit XXH3 hash of ``key`` (str as UTF-8, bytes, or int as 8 LE bytes)."""
    return hash_object(key)


def hash64_many(keys):
    """Hash a 1-D array of uint64 keys (each as ``hash64(int(k))``), returning a uint64 array."""
    import numpy as np
    cdef const uint64_t[::1] src = np.ascontiguousarray(keys, dtype=np.uint64)
    out = np.empty(src.shape[0], dtype=np.uint64)
    cdef uint64_t[::1] dst = out
    cdef Py_ssize_t i, n = src.shape[0]
    with nogil:
        for i in range(n):
            dst[i] = hash_u64(src[i])
    return out
