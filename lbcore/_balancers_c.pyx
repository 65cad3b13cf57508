# cython: language_level=3, embedsignature=True
"""Compiled balancing algorithms behind one interface (see ``lbcore.balancers``)."""

cimport cython
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from libc.math cimport isfinite
from libc.stdint cimport int32_t, int64_t, uint64_t
from libc.string cimport memset

import os

import numpy as np

from lbcore._hashing_c cimport hash_object, hash_u64


cdef inline uint64_t splitmix64(uint64_t* state) noexcept nogil:
    state[0] += 0x9E3779B97F4A7C15ULL
    cdef uint64_t z = state[0]
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL
    return z ^ (z >> 31)


cdef inline uint64_t mix64(uint64_t z) noexcept nogil:
    """A bijective 64-bit finalizer (splitmix64's): spreads a combined key over all bits."""
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL
    return z ^ (z >> 31)


cdef bytes _identity(object backend):
    if isinstance(backend, bytes):
        return <bytes>backend
    if isinstance(backend, str):
        return (<str>backend).encode("utf-8")
    return str(backend).encode("utf-8")


cdef class Balancer:
    """Base of every compiled algorithm: ``pick``, ``pick_many``, ``update``, connection counts.

    Backends are identified by name (``str(backend)``, or the bytes themselves): ``update`` keeps
    the structure of the backends that stay, so they keep their keys.
    """

    name = "balancer"

    def __cinit__(self, *args, **kwargs):
        self.n = 0
        self.w = NULL
        self.active = NULL
        self._backends = ()
        self._names = ()
        self._weights = ()
        self.rng = 0

    def __dealloc__(self):
        PyMem_Free(self.w)
        PyMem_Free(self.active)

    def __init__(self, backends, weights=None, *, seed=None):
        if seed is None:
            seed = int.from_bytes(os.urandom(8), "little")
        self.rng = <uint64_t>(int(seed) & 0xFFFFFFFFFFFFFFFF)
        self.update(backends, weights)

    # -- Python interface ---------------------------------------------------------------------

    @property
    def backends(self) -> tuple:
        """The backends, index -> backend, as last given to ``update``."""
        return self._backends

    @property
    def weights(self) -> tuple:
        """The weights, index -> float."""
        return self._weights

    @property
    def active(self) -> tuple:
        """Live connections per backend, counted by ``acquire`` and ``release``."""
        return tuple(self.active[i] for i in range(self.n))

    def __len__(self) -> int:
        return self.n

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} n={self.n}>"

    def pick(self, key) -> int:
        """Index of the backend for ``key`` (str as UTF-8, bytes, or int as ``hash64`` hashes it)."""
        return self.pick_hash(hash_object(key))

    def pick_hashed(self, uint64_t h) -> int:
        """Index of the backend for a key already hashed with ``lbcore.hash64``."""
        return self.pick_hash(h)

    def pick_many(self, keys):
        """Indices (int32 array) for a 1-D array of uint64 keys, each hashed as ``hash64(int(k))``."""
        cdef const uint64_t[::1] src = np.ascontiguousarray(keys, dtype=np.uint64)
        out = np.empty(src.shape[0], dtype=np.int32)
        cdef int32_t[::1] dst = out
        cdef Py_ssize_t count = src.shape[0]
        if count:
            with nogil:
                self.pick_many_c(&src[0], &dst[0], count)
        return out

    def acquire(self, int i) -> None:
        """Count one connection opened to backend ``i``."""
        self._check_index(i)
        self.acquire_c(i)

    def release(self, int i) -> None:
        """Count one connection closed on backend ``i``."""
        self._check_index(i)
        if self.active[i] <= 0:
            raise ValueError(f"release: backend {i} ({self._backends[i]!r}) has no live connection")
        self.release_c(i)

    def update(self, backends, weights=None) -> None:
        """Replace the backends (and weights); backends that stay keep their live counts."""
        backends = tuple(backends)
        cdef Py_ssize_t n = len(backends)
        if n == 0:
            raise ValueError(f"{self.name}: backends must not be empty")
        if n > 0x3FFFFFFF:
            raise ValueError(f"{self.name}: too many backends ({n})")
        names = tuple(_identity(b) for b in backends)
        index = {}
        for i, nm in enumerate(names):
            if nm in index:
                raise ValueError(f"{self.name}: backend {backends[i]!r} is given twice")
            index[nm] = i
        ws = _check_weights(self.name, weights, n)
        old = {nm: self.active[i] for i, nm in enumerate(self._names)}
        cdef double* w = <double*>PyMem_Malloc(n * sizeof(double))
        cdef int64_t* act = <int64_t*>PyMem_Malloc(n * sizeof(int64_t))
        if w == NULL or act == NULL:
            PyMem_Free(w)
            PyMem_Free(act)
            raise MemoryError()
        for i in range(n):
            w[i] = ws[i]
            act[i] = old.get(names[i], 0)
        PyMem_Free(self.w)
        PyMem_Free(self.active)
        self.w = w
        self.active = act
        self.n = <int>n
        self._backends = backends
        self._names = names
        self._weights = ws
        self._rebuild()

    @property
    def nbytes(self) -> int:
        """Bytes of C memory this balancer holds (its lookup structure and per-backend arrays)."""
        return self.n * (sizeof(double) + sizeof(int64_t)) + self._extra_nbytes()

    def _extra_nbytes(self) -> int:
        return 0

    def _check_index(self, int i):
        if i < 0 or i >= self.n:
            raise IndexError(f"backend index {i} is not in 0..{self.n - 1}")

    # -- C interface ---------------------------------------------------------------------------

    cdef int _rebuild(self) except -1:
        return 0

    cdef int pick_hash(self, uint64_t h) noexcept nogil:
        return -1

    cdef int pick_hash_retry(self, uint64_t h, int attempt) noexcept nogil:
        if attempt == 0:
            return self.pick_hash(h)
        return self.pick_hash(mix64(h ^ (<uint64_t>attempt * 0x9E3779B97F4A7C15ULL)))

    cdef void pick_many_c(self, const uint64_t* keys, int32_t* out, Py_ssize_t count) noexcept nogil:
        cdef Py_ssize_t i
        for i in range(count):
            out[i] = self.pick_hash(hash_u64(keys[i]))

    cdef void acquire_c(self, int i) noexcept nogil:
        self.active[i] += 1

    cdef void release_c(self, int i) noexcept nogil:
        if self.active[i] > 0:
            self.active[i] -= 1


cdef tuple _check_weights(str algorithm, object weights, Py_ssize_t n):
    if weights is None:
        return (1.0,) * n
    ws = tuple(weights)
    if len(ws) != n:
        raise ValueError(f"{algorithm}: weights has {len(ws)} entries for {n} backends")
    out = []
    cdef double x
    for i, v in enumerate(ws):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ValueError(f"{algorithm}: weights[{i}] must be a number, not {v!r}")
        x = v
        if not isfinite(x) or x < 0:
            raise ValueError(f"{algorithm}: weights[{i}] must be finite and >= 0, not {v!r}")
        out.append(x)
    if not any(out):
        raise ValueError(f"{algorithm}: at least one weight must be > 0, got {list(ws)!r}")
    return tuple(out)


cdef class RoundRobin(Balancer):
    """Each backend in turn (placeholder until the smooth weighted schedule lands)."""

    name = "round_robin"

    cdef int pick_hash(self, uint64_t h) noexcept nogil:
        self.rng += 1
        return <int>(self.rng % <uint64_t>self.n)
