# cython: language_level=3
"""C-level hashing shared by the compiled modules (``cimport lbcore.core._hashing_c``)."""

from libc.stdint cimport uint64_t

cdef extern from *:
    """
    #define XXH_INLINE_ALL
    #include "xxhash/xxhash.h"
    """
    uint64_t XXH3_64bits(const void* data, size_t length) nogil
    uint64_t XXH3_64bits_withSeed(const void* data, size_t length, uint64_t seed) nogil


cdef inline uint64_t hash_u64(uint64_t value) noexcept nogil:
    """Hash an integer key: XXH3 over its 8 little-endian bytes (x86 and arm64 are little-endian)."""
    return XXH3_64bits(&value, 8)


cdef uint64_t hash_object(object key) except? 0
