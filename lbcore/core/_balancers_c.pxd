# cython: language_level=3, embedsignature=True
"""C-level view of the balancers, for compiled modules (``from lbcore.core._balancers_c cimport Balancer``).

Contract for callers that hold a ``Balancer`` at C level:

- ``pick_hash(h)`` takes a key already hashed with ``lbcore.core._hashing_c`` (``hash_object`` or
  ``hash_u64``) and returns the backend's index in ``0 <= i < n``, or -1 when there is none. It
  runs without the GIL. Stateful algorithms (round robin, random, least_conn) ignore ``h``.
- ``pick_hash_retry(h, attempt)`` answers for the ``attempt``-th retry of the same key
  (``attempt == 0`` is ``pick_hash(h)``): a new connection whose first backend refused it.
- ``acquire_c(i)`` / ``release_c(i)`` count a connection opened to / closed on backend ``i``;
  least_conn and bounded_load read these counts.
- ``update()`` replaces the C arrays: it must not run while another thread is inside
  ``pick_hash`` without the GIL. Calls made with the GIL held are always safe.
"""

from libc.stdint cimport int32_t, int64_t, uint64_t


cdef class Balancer:
    cdef readonly int n              # number of backends
    cdef tuple _backends             # the backends as given, index -> object
    cdef tuple _names                # index -> bytes identity used for hashing (str as UTF-8)
    cdef tuple _weights              # index -> float weight as given
    cdef double* w                   # n weights (C copy of _weights)
    cdef int64_t* active             # n live-connection counts
    cdef uint64_t rng                # splitmix64 state of the stateful algorithms

    cdef int pick_hash(self, uint64_t h) noexcept nogil
    cdef int pick_hash_retry(self, uint64_t h, int attempt) noexcept nogil
    cdef void pick_many_c(self, const uint64_t* keys, int32_t* out, Py_ssize_t count) noexcept nogil
    cdef void acquire_c(self, int i) noexcept nogil
    cdef void release_c(self, int i) noexcept nogil
    cdef int _rebuild(self) except -1
