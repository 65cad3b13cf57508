# cython: language_level=3, embedsignature=True
"""Compiled balancing algorithms behind one interface (see ``lbcore.core.balancers``)."""

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_GET_SIZE
from cpython.long cimport PyLong_AsLongLongAndOverflow, PyLong_CheckExact
from cpython.unicode cimport PyUnicode_AsUTF8AndSize, PyUnicode_CheckExact
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from libc.math cimport ceil, floor, isfinite, log, pow
from libc.stdint cimport int32_t, int64_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset

import os

import numpy as np

from lbcore.core._hashing_c cimport XXH3_64bits, XXH3_64bits_withSeed, hash_object, hash_u64


cdef bint use_avx2 = False  # pick_many's AVX2 paths (see lbc_cpu_has_avx2 below)


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


cdef inline uint64_t fast_hash(object key) except? 0:
    """``hash_object(key)`` with the common exact types first and no Python-level comparison."""
    cdef const char* data
    cdef Py_ssize_t size
    cdef int overflow
    cdef long long value
    if PyUnicode_CheckExact(key):
        data = PyUnicode_AsUTF8AndSize(key, &size)
        return XXH3_64bits(data, <size_t>size)
    if PyLong_CheckExact(key):
        value = PyLong_AsLongLongAndOverflow(key, &overflow)
        if overflow == 0:
            return hash_u64(<uint64_t>value)  # a negative key wraps as in hash64
    elif PyBytes_CheckExact(key):
        return XXH3_64bits(PyBytes_AS_STRING(key), <size_t>PyBytes_GET_SIZE(key))
    return hash_object(key)


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

    @cython.always_allow_keywords(False)
    def pick(self, key) -> int:
        """Index of the backend for ``key`` (str as UTF-8, bytes, or int as ``hash64`` hashes it)."""
        return self.pick_hash(fast_hash(key))

    def pick_hashed(self, uint64_t h) -> int:
        """Index of the backend for a key already hashed with ``lbcore.hash64``."""
        return self.pick_hash(h)

    def pick_retry(self, key, int attempt) -> int:
        """Backend for the ``attempt``-th retry of ``key`` (0 is ``pick(key)``): where a new
        connection goes when the backend it was first given refused it."""
        if attempt < 0:
            raise ValueError(f"attempt must be >= 0, not {attempt}")
        return self.pick_hash_retry(fast_hash(key), attempt)

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
        self._check_update(names, ws)
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

    def _check_update(self, names, weights) -> None:
        """Refuse backends or weights this algorithm cannot take, before anything changes."""

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


cdef inline uint64_t name_hash(bytes name, uint64_t seed) noexcept:
    return XXH3_64bits_withSeed(<const char*>name, <size_t>len(name), seed)


cdef bint _all_equal(const double* w, int n) noexcept nogil:
    cdef int i
    for i in range(1, n):
        if w[i] != w[0]:
            return False
    return True


cdef double _sum(const double* w, int n) noexcept nogil:
    cdef double s = 0
    cdef int i
    for i in range(n):
        s += w[i]
    return s


# ---------------------------------------------------------------------------------------------
# Round robin: nginx's smooth weighted round robin
# ---------------------------------------------------------------------------------------------

cdef enum:
    SCHEDULE_MAX_WORK = 1 << 23  # precompute the period only when period * n stays this small


cdef class WeightedRoundRobin(Balancer):
    """Smooth weighted round robin, as nginx does it: weights {5, 1, 1} give a a b a c a a.

    Every pick adds each backend's weight to its ``current`` and takes the largest, which then
    gives back the total: heavy backends are spread through the period, never sent in a burst.
    With integer weights the period (sum of weights over their gcd) is precomputed, so a pick is
    one array read; otherwise each pick is the O(n) step.
    """

    name = "weighted_round_robin"
    cdef double* current
    cdef double total
    cdef bint equal
    cdef uint64_t counter
    cdef object _schedule
    cdef const int32_t* schedule
    cdef Py_ssize_t period

    def __cinit__(self, *args, **kwargs):
        self.current = NULL
        self.schedule = NULL
        self._schedule = None

    def __dealloc__(self):
        PyMem_Free(self.current)

    def __init__(self, backends, weights=None, *, seed=None):
        Balancer.__init__(self, backends, weights, seed=seed)

    def _extra_nbytes(self) -> int:
        return self.n * sizeof(double) + self.period * sizeof(int32_t)

    cdef int _rebuild(self) except -1:
        cdef int i
        PyMem_Free(self.current)
        self.current = <double*>PyMem_Malloc(self.n * sizeof(double))
        if self.current == NULL:
            raise MemoryError()
        memset(self.current, 0, self.n * sizeof(double))
        self.total = _sum(self.w, self.n)
        self.equal = _all_equal(self.w, self.n)
        self.counter = 0
        self._schedule = None
        self.schedule = NULL
        self.period = 0
        if self.equal or not all(float(x).is_integer() for x in self._weights):
            return 0
        ints = [int(x) for x in self._weights]
        g = 0
        for x in ints:
            g = _gcd(g, x)
        ints = [x // g for x in ints]
        period = sum(ints)
        if period * self.n > SCHEDULE_MAX_WORK:
            return 0
        schedule = np.empty(period, dtype=np.int32)
        cdef int32_t[::1] out = schedule
        cdef int64_t[::1] cur = np.zeros(self.n, dtype=np.int64)
        cdef int64_t[::1] wi = np.asarray(ints, dtype=np.int64)
        cdef int64_t tot = period
        cdef Py_ssize_t k
        cdef int best
        for k in range(period):
            best = 0
            for i in range(self.n):
                cur[i] += wi[i]
                if cur[i] > cur[best]:
                    best = i
            cur[best] -= tot
            out[k] = best
        self._schedule = schedule
        self.schedule = &out[0]
        self.period = period
        return 0

    cdef int pick_hash(self, uint64_t h) noexcept nogil:
        cdef uint64_t c = self.counter
        self.counter = c + 1
        if self.equal:
            return <int>(c % <uint64_t>self.n)
        if self.schedule != NULL:
            return self.schedule[c % <uint64_t>self.period]
        return self._step()

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef int _step(self) noexcept nogil:
        cdef int i, best = 0
        for i in range(self.n):
            self.current[i] += self.w[i]
            if self.current[i] > self.current[best]:
                best = i
        self.current[best] -= self.total
        return best


cdef object _gcd(object a, object b):
    while b:
        a, b = b, a % b
    return a


cdef class RoundRobin(WeightedRoundRobin):
    """Each backend in turn; unequal weights make it the smooth weighted round robin."""

    name = "round_robin"


# ---------------------------------------------------------------------------------------------
# Random and least connections (power of two choices)
# ---------------------------------------------------------------------------------------------


cdef class WeightedRandom(Balancer):
    """A random backend in proportion to its weight: Vose's alias table, O(1) per pick.

    The random source is a splitmix64 state per balancer (``seed=`` makes it repeatable); the
    key is ignored.
    """

    name = "random"
    cdef object _prob_arr, _alias_arr
    cdef const double* prob
    cdef const int32_t* alias
    cdef bint equal

    def __init__(self, backends, weights=None, *, seed=None):
        Balancer.__init__(self, backends, weights, seed=seed)

    def _extra_nbytes(self) -> int:
        return self.n * (sizeof(double) + sizeof(int32_t))

    cdef int _rebuild(self) except -1:
        cdef int n = self.n, i, s, l
        cdef double total = _sum(self.w, n)
        prob_arr = np.zeros(n, dtype=np.float64)
        alias_arr = np.arange(n, dtype=np.int32)
        cdef double[::1] prob = prob_arr
        cdef int32_t[::1] alias = alias_arr
        cdef double[::1] scaled = np.empty(n, dtype=np.float64)
        small, large = [], []
        for i in range(n):
            scaled[i] = self.w[i] * n / total
            (small if scaled[i] < 1.0 else large).append(i)
        while small and large:
            s = small.pop()
            l = large[len(large) - 1]
            prob[s] = scaled[s]
            alias[s] = l
            scaled[l] = (scaled[l] + scaled[s]) - 1.0
            if scaled[l] < 1.0:
                large.pop()
                small.append(l)
        for i in large + small:  # leftovers are 1 up to rounding
            prob[i] = 1.0
        heaviest = max(range(n), key=lambda k: self.w[k])
        for i in range(n):  # a zero weight must never be drawn, whatever the rounding did
            if self.w[i] == 0:
                prob[i] = 0.0
                if self.w[alias[i]] == 0:
                    alias[i] = heaviest
        self._prob_arr, self._alias_arr = prob_arr, alias_arr
        self.prob = &prob[0]
        self.alias = &alias[0]
        self.equal = _all_equal(self.w, n)
        return 0

    cdef inline int _sample(self) noexcept nogil:
        cdef uint64_t r = splitmix64(&self.rng)
        cdef int i = <int>(((r >> 32) * <uint64_t>self.n) >> 32)
        if self.equal:
            return i
        if (r & 0xFFFFFFFFULL) * (1.0 / 4294967296.0) < self.prob[i]:
            return i
        return self.alias[i]

    cdef int pick_hash(self, uint64_t h) noexcept nogil:
        return self._sample()


cdef class LeastConn(WeightedRandom):
    """Least connections by the power of two choices, weighted as Envoy's least request.

    Two *distinct* backends are drawn at random in proportion to their weights (the second among
    the others), and the one of larger effective weight ``weight / (active + 1) ** bias`` wins
    (``active_request_bias``, 1.0 by default: fewer live connections per unit of weight). With
    equal weights the one with fewer live connections wins, whatever the bias; so with two
    backends the idle one always wins. ``acquire``/``release`` keep the counts. ``pick_many``
    assigns the batch as if each pick were acquired in turn, without changing the live counts.
    """

    name = "least_conn"
    cdef double bias
    cdef object _cum_arr
    cdef const double* cum       # n + 1 running sums of the weights: backend i owns [cum[i], cum[i+1])
    cdef int positive            # backends of weight > 0
    cdef int only                # the one of weight > 0 when positive == 1

    def __init__(self, backends, weights=None, *, active_request_bias=1.0, seed=None):
        if isinstance(active_request_bias, bool) or not isinstance(active_request_bias, (int, float)) \
                or not isfinite(active_request_bias) or active_request_bias < 0:
            raise ValueError(f"{self.name}: active_request_bias must be a number >= 0.0, "
                             f"not {active_request_bias!r}")
        self.bias = active_request_bias
        WeightedRandom.__init__(self, backends, weights, seed=seed)

    @property
    def active_request_bias(self) -> float:
        """The exponent of ``active + 1`` in the effective weight ``weight / (active + 1) ** bias``."""
        return self.bias

    def _extra_nbytes(self) -> int:
        return WeightedRandom._extra_nbytes(self) + (self.n + 1) * sizeof(double)

    cdef int _rebuild(self) except -1:
        WeightedRandom._rebuild(self)
        cum_arr = np.zeros(self.n + 1, dtype=np.float64)
        cdef double[::1] cum = cum_arr
        cdef int i
        self.positive = 0
        self.only = 0
        for i in range(self.n):
            cum[i + 1] = cum[i] + self.w[i]
            if self.w[i] > 0:
                self.positive += 1
                self.only = i
        self._cum_arr = cum_arr
        self.cum = &cum[0]
        return 0

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef int _other(self, int a) noexcept nogil:
        """A backend other than ``a``, in proportion to its weight (``a`` has weight > 0)."""
        cdef int n = self.n, b, tries, lo, hi, mid
        cdef uint64_t r
        cdef double x
        if self.equal:
            r = splitmix64(&self.rng)
            b = <int>(((r >> 32) * <uint64_t>(n - 1)) >> 32)
            return b + (b >= a)
        for tries in range(4):  # a few draws from the alias table settle it unless a is heavy
            b = self._sample()
            if b != a:
                return b
        # exact draw over the other backends' weights: skip a's interval [cum[a], cum[a+1])
        r = splitmix64(&self.rng)
        x = (r >> 11) * (1.0 / 9007199254740992.0) * (self.cum[n] - self.w[a])
        if x >= self.cum[a]:
            x += self.w[a]
        lo = 0
        hi = n - 1  # the last i with cum[i] <= x, among those of weight > 0 and not a
        while lo < hi:
            mid = (lo + hi + 1) >> 1
            if self.cum[mid] <= x:
                lo = mid
            else:
                hi = mid - 1
        b = lo
        while b >= 0 and (b == a or self.w[b] <= 0):  # rounding landed on an empty interval
            b -= 1
        if b < 0:
            b = lo
            while b < n and (b == a or self.w[b] <= 0):
                b += 1
        return b

    cdef inline int _choose(self, const int64_t* loads) noexcept nogil:
        if self.positive == 1:
            return self.only
        cdef int a = self._sample()
        cdef int b = self._other(a)
        if self.equal:
            return a if loads[a] <= loads[b] else b
        if self.bias == 1.0:
            return a if self.w[a] * (loads[b] + 1) >= self.w[b] * (loads[a] + 1) else b
        return a if self.w[a] * pow(<double>(loads[b] + 1), self.bias) \
            >= self.w[b] * pow(<double>(loads[a] + 1), self.bias) else b

    cdef int pick_hash(self, uint64_t h) noexcept nogil:
        return self._choose(self.active)

    cdef void pick_many_c(self, const uint64_t* keys, int32_t* out, Py_ssize_t count) noexcept nogil:
        cdef int64_t* loads = <int64_t*>malloc(self.n * sizeof(int64_t))
        cdef Py_ssize_t k
        cdef int i
        if loads == NULL:
            Balancer.pick_many_c(self, keys, out, count)
            return
        memcpy(loads, self.active, self.n * sizeof(int64_t))
        for k in range(count):
            i = self._choose(loads)
            loads[i] += 1
            out[k] = i
        free(loads)


# ---------------------------------------------------------------------------------------------
# Consistent hashing: ring (ketama), bounded loads, Maglev, jump, rendezvous
# ---------------------------------------------------------------------------------------------


cdef class RingHash(Balancer):
    """Ketama-style ring: each backend owns points ``XXH3(name, seed=j)``; a key goes to the
    first point at or after its hash.

    A backend's number of points is ``round(scale * weight)`` (at least 1), where ``scale`` is
    chosen once so that the ring has at least ``min_ring_size`` points and ``vnodes`` points per
    backend of mean weight. ``update`` keeps ``scale``, so the backends that stay keep exactly
    their points and only the keys of a removed backend move, however many go (the ring may then
    fall under ``min_ring_size``, never under ``vnodes`` points per backend of the first mean
    weight); the scale is chosen again only when the ring would grow over ``max_ring_size``.

    A pick reads a bucket table indexed by the key's top bits (one bucket per point, at most
    2**20) that gives the first point of each slice of the hash space, so it searches about one
    point instead of the whole ring; the answer is the same as a search of the whole ring.
    """

    name = "ring_hash"
    cdef object _ring_arr, _owner_arr, _bucket_arr
    cdef const uint64_t* ring
    cdef const int32_t* owner
    # bucket[j] is the first point >= j << shift: a key's top bits narrow the search to the
    # points of its bucket (about one), instead of a binary search over the whole ring
    cdef const uint32_t* bucket
    cdef int shift
    cdef Py_ssize_t size
    cdef double scale
    cdef Py_ssize_t min_ring_size, max_ring_size
    cdef int vnodes

    def __init__(self, backends, weights=None, *, min_ring_size=1024, max_ring_size=8388608,
                 vnodes=160, seed=None):
        _check_int(self.name, "min_ring_size", min_ring_size, 1)
        _check_int(self.name, "max_ring_size", max_ring_size, min_ring_size)
        _check_int(self.name, "vnodes", vnodes, 1)
        self.min_ring_size = min_ring_size
        self.max_ring_size = max_ring_size
        self.vnodes = vnodes
        self.scale = 0
        Balancer.__init__(self, backends, weights, seed=seed)

    @property
    def ring_size(self) -> int:
        """Number of points on the ring."""
        return self.size

    @property
    def points(self):
        """(sorted point hashes as uint64, owning backend index as int32): copies of the ring."""
        return np.array(self._ring_arr, copy=True), np.array(self._owner_arr, copy=True)

    def _extra_nbytes(self) -> int:
        return self.size * (sizeof(uint64_t) + sizeof(int32_t)) + self._bucket_arr.nbytes

    def _points(self, double scale):
        return [max(1, int(round(scale * x))) if x > 0 else 0 for x in self._weights]

    def _check_update(self, names, weights) -> None:
        if len(names) > self.max_ring_size:
            raise ValueError(f"{self.name}: {len(names)} backends do not fit "
                             f"max_ring_size={self.max_ring_size}")

    cdef int _rebuild(self) except -1:
        cdef int n = self.n, i
        cdef double total = _sum(self.w, n)
        positive = sum(1 for x in self._weights if x > 0)
        points = self._points(self.scale) if self.scale > 0 else None
        if points is None or sum(points) > self.max_ring_size:
            self.scale = max(self.vnodes / (total / positive), self.min_ring_size / total)
            points = self._points(self.scale)
            if sum(points) > self.max_ring_size:
                self.scale = (self.max_ring_size - n) / total
                points = self._points(self.scale)
        cdef Py_ssize_t size = sum(points), pos = 0, j, count
        ring_arr = np.empty(size, dtype=np.uint64)
        owner_arr = np.empty(size, dtype=np.int32)
        cdef uint64_t[::1] ring = ring_arr
        cdef int32_t[::1] owner = owner_arr
        cdef const char* data
        cdef size_t length
        cdef bytes nm
        # points are laid out in name order, so the stable sort breaks (unlikely) hash ties by
        # name, whatever the order of the backends list
        for i in sorted(range(n), key=self._names.__getitem__):
            nm = self._names[i]
            data = nm
            length = len(nm)
            count = points[i]
            for j in range(count):
                ring[pos] = XXH3_64bits_withSeed(data, length, <uint64_t>j)
                owner[pos] = i
                pos += 1
        order = np.argsort(ring_arr, kind="stable")
        ring_arr = np.ascontiguousarray(ring_arr[order])
        owner_arr = np.ascontiguousarray(owner_arr[order])
        ring = ring_arr
        owner = owner_arr
        # as many buckets as points (a power of two, at most 2**20), so a bucket holds about one
        cdef int bits = 1
        while bits < 20 and (<Py_ssize_t>1 << bits) < size:
            bits += 1
        starts = np.arange((1 << bits) + 1, dtype=np.uint64) << np.uint64(64 - bits)
        bucket_arr = np.searchsorted(ring_arr, starts[:-1], side="left").astype(np.uint32)
        bucket_arr = np.append(bucket_arr, np.uint32(size))  # the end of the last bucket
        cdef uint32_t[::1] bucket = bucket_arr
        self._ring_arr, self._owner_arr, self._bucket_arr = ring_arr, owner_arr, bucket_arr
        self.ring = &ring[0]
        self.owner = &owner[0]
        self.bucket = &bucket[0]
        self.shift = 64 - bits
        self.size = size
        return 0

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef inline Py_ssize_t _lower(self, uint64_t h) noexcept nogil:
        # first point >= h, wrapping to the first point of the ring. Every point >= h of the
        # bucket of h lies in [bucket[j], bucket[j + 1]), and bucket[j + 1] is the answer when
        # none of them is (the last entry is the ring's size: the wrap)
        cdef const uint64_t* ring = self.ring
        cdef uint64_t j = h >> self.shift
        cdef Py_ssize_t base = self.bucket[j], length = self.bucket[j + 1] - base, half
        while length > 0:  # a binary search over the bucket's points: usually one or none
            half = length >> 1
            if ring[base + half] < h:
                base += half + 1
                length -= half + 1
            else:
                length = half
        return 0 if base == self.size else base

    cdef int pick_hash(self, uint64_t h) noexcept nogil:
        return self.owner[self._lower(h)]


cdef class BoundedLoad(RingHash):
    """Consistent hashing with bounded loads (Mirrokni, Thorup, Zadimoghaddam).

    A key walks the ring from its point to the first backend whose live connections stay under
    its capacity ``ceil(balance_factor * (total + 1) * weight / sum(weights))``, so no backend
    ever holds more than ``ceil(balance_factor * mean)`` (HAProxy's ``hash-balance-factor`` is
    this factor in percent). ``pick`` reads the counts kept by ``acquire``/``release``;
    ``pick_many`` assigns the batch as if each pick were acquired in turn.
    """

    name = "bounded_load"
    cdef double factor
    cdef double wsum
    cdef int64_t total_active

    def __init__(self, backends, weights=None, *, balance_factor=1.25, min_ring_size=1024,
                 max_ring_size=8388608, vnodes=160, seed=None):
        if isinstance(balance_factor, bool) or not isinstance(balance_factor, (int, float)) \
                or not isfinite(balance_factor) or balance_factor < 1.0:
            raise ValueError(f"{self.name}: balance_factor must be a number >= 1.0, not {balance_factor!r}")
        self.factor = balance_factor
        RingHash.__init__(self, backends, weights, min_ring_size=min_ring_size,
                          max_ring_size=max_ring_size, vnodes=vnodes, seed=seed)

    @property
    def balance_factor(self) -> float:
        """The factor c: no backend gets more than ceil(c x mean load)."""
        return self.factor

    cdef int _rebuild(self) except -1:
        RingHash._rebuild(self)
        self.wsum = _sum(self.w, self.n)
        self.total_active = 0
        for i in range(self.n):
            self.total_active += self.active[i]
        return 0

    cdef inline int _choose(self, uint64_t h, const int64_t* loads, int64_t total) noexcept nogil:
        cdef Py_ssize_t start = self._lower(h), k = start, step
        # load < ceil(x) <=> load < x for an integer load; the margin keeps rounding on the safe side
        cdef double per_weight = self.factor * (total + 1) / self.wsum * (1.0 - 1e-12)
        cdef int o
        for step in range(self.size):
            o = self.owner[k]
            if loads[o] < per_weight * self.w[o]:
                return o
            k += 1
            if k == self.size:
                k = 0
        return self.owner[start]

    cdef int pick_hash(self, uint64_t h) noexcept nogil:
        return self._choose(h, self.active, self.total_active)

    cdef void acquire_c(self, int i) noexcept nogil:
        self.active[i] += 1
        self.total_active += 1

    cdef void release_c(self, int i) noexcept nogil:
        if self.active[i] > 0:
            self.active[i] -= 1
            self.total_active -= 1

    cdef void pick_many_c(self, const uint64_t* keys, int32_t* out, Py_ssize_t count) noexcept nogil:
        cdef int64_t* loads = <int64_t*>malloc(self.n * sizeof(int64_t))
        cdef int64_t total = self.total_active
        cdef Py_ssize_t k
        cdef int i
        if loads == NULL:
            Balancer.pick_many_c(self, keys, out, count)
            return
        memcpy(loads, self.active, self.n * sizeof(int64_t))
        for k in range(count):
            i = self._choose(hash_u64(keys[k]), loads, total)
            loads[i] += 1
            total += 1
            out[k] = i
        free(loads)


cdef bint _is_prime(uint64_t m) noexcept:
    cdef uint64_t d = 3
    if m < 2:
        return False
    if m % 2 == 0:
        return m == 2
    while d * d <= m:
        if m % d == 0:
            return False
        d += 2
    return True


cdef class Maglev(Balancer):
    """Maglev hashing (Eisenbud et al., NSDI 2016, section 3.4): a lookup table of prime size
    ``table_size`` (65537 by default) filled by each backend's permutation
    ``offset + j * skip (mod M)``, both from the backend's name.

    Backends fill the table in name order, each in proportion to its weight (a backend of the
    largest weight takes one entry per round, one of a third of that weight one every three
    rounds), so a pick is one table read and an ``update`` that removes one backend moves a little
    more than its share of keys (Envoy's simulations: about twice a ring's).
    """

    name = "maglev"
    cdef object _table_arr
    cdef const int32_t* table    # entry -> backend, when n >= 65536
    cdef const uint16_t* table16  # the same in half the memory (128 KiB at M = 65537), n < 65536
    cdef uint64_t m

    def __init__(self, backends, weights=None, *, table_size=65537, seed=None):
        _check_int(self.name, "table_size", table_size, 2)
        if table_size >= (1 << 31) or not _is_prime(table_size):
            raise ValueError(f"{self.name}: table_size must be a prime below 2**31, not {table_size!r}")
        self.m = table_size
        Balancer.__init__(self, backends, weights, seed=seed)

    @property
    def table_size(self) -> int:
        """M, the number of entries of the lookup table."""
        return self.m

    @property
    def table(self):
        """The lookup table: entry -> backend index (a copy, int32)."""
        return np.asarray(self._table_arr, dtype=np.int32).copy()

    def _extra_nbytes(self) -> int:
        return self._table_arr.nbytes

    def _check_update(self, names, weights) -> None:
        if len(names) >= <Py_ssize_t>self.m:
            raise ValueError(f"{self.name}: {len(names)} backends need a table_size above {len(names)}, "
                             f"not {self.m}")

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef int _rebuild(self) except -1:
        cdef int n = self.n, k
        cdef uint64_t m = self.m
        order = sorted(range(n), key=self._names.__getitem__)
        cdef int32_t[::1] who = np.asarray(order, dtype=np.int32)
        cdef uint64_t[::1] pos = np.empty(n, dtype=np.uint64)
        cdef uint64_t[::1] skip = np.empty(n, dtype=np.uint64)
        cdef double[::1] rate = np.empty(n, dtype=np.float64)
        cdef double[::1] credit = np.zeros(n, dtype=np.float64)
        cdef double wmax = max(self._weights)
        for k in range(n):
            nm = self._names[order[k]]
            pos[k] = name_hash(nm, 0x6D61676C65764F46ULL) % m
            skip[k] = name_hash(nm, 0x6D61676C65765350ULL) % (m - 1) + 1
            rate[k] = self.w[order[k]] / wmax
        table_arr = np.full(m, -1, dtype=np.int32)
        cdef int32_t[::1] table = table_arr
        # "is slot c taken" is asked about M ln M times: a bitmap of M bits stays in L1
        cdef uint64_t[::1] taken = np.zeros((m + 63) // 64, dtype=np.uint64)
        cdef uint64_t filled = 0, c
        with nogil:
            while filled < m:
                for k in range(n):
                    if rate[k] <= 0:
                        continue
                    credit[k] += rate[k]
                    if credit[k] < 1.0 - 1e-9:
                        continue
                    credit[k] -= 1.0
                    # every slot is in the permutation (M prime, 0 < skip < M): a free one exists
                    c = pos[k]
                    while (taken[c >> 6] >> (c & 63)) & 1:
                        c += skip[k]
                        if c >= m:
                            c -= m
                    taken[c >> 6] |= (<uint64_t>1) << (c & 63)
                    table[c] = who[k]
                    c += skip[k]
                    if c >= m:
                        c -= m
                    pos[k] = c
                    filled += 1
                    if filled == m:
                        break
        cdef const uint16_t[::1] small
        if n < 65536:  # half the cache lines for the picks to touch
            small_arr = table_arr.astype(np.uint16)
            small = small_arr
            self._table_arr = small_arr
            self.table16 = &small[0]
            self.table = NULL
        else:
            self._table_arr = table_arr
            self.table = &table[0]
            self.table16 = NULL
        return 0

    cdef int pick_hash(self, uint64_t h) noexcept nogil:
        # the high 32 bits scaled into [0, M): uniform, and no division
        cdef uint64_t entry = ((h >> 32) * self.m) >> 32
        if self.table16 != NULL:
            return self.table16[entry]
        return self.table[entry]

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef void pick_many_c(self, const uint64_t* keys, int32_t* out, Py_ssize_t count) noexcept nogil:
        # independent keys: the out-of-order core overlaps the hashes and the table reads of
        # many keys, and the table (128 KiB) stays in L2, so nothing is left to prefetch
        cdef Py_ssize_t k = 0
        cdef const int32_t* table = self.table
        cdef const uint16_t* table16 = self.table16
        cdef uint64_t m = self.m
        if use_avx2:
            k = lbc_maglev_many_avx2(keys, out, count, table16, table, m)
        if table16 != NULL:
            for k in range(k, count):
                out[k] = table16[((hash_u64(keys[k]) >> 32) * m) >> 32]
        else:
            for k in range(k, count):
                out[k] = table[((hash_u64(keys[k]) >> 32) * m) >> 32]


cdef inline int32_t jump_hash(uint64_t key, int32_t buckets) noexcept nogil:
    """Lamping and Veach, "A Fast, Minimal Memory, Consistent Hash Algorithm" (2014)."""
    cdef int64_t b = -1, j = 0
    while j < buckets:
        b = j
        key = key * 2862933555777941757ULL + 1
        j = <int64_t>((b + 1) * (2147483648.0 / <double>((key >> 33) + 1)))
    return <int32_t>b


cdef extern from *:
    """
    /* Jump hash of a group of keys, for pick_many.
     *
     * A key's divisions depend on its LCG sequence only, never on the bucket reached so far: all
     * `steps` divisions of every key of a group are independent and overlap in the divider. The
     * group runs `steps` rounds without a branch (a key that already left keeps its bucket), then
     * the few keys that need more rounds finish alone. The arithmetic is the reference's,
     * operation for operation: (double)(b + 1) * (2^31 / (double)((key >> 33) + 1)), truncated.
     * On x86-64 two keys share one SSE2 register (SSE2 is part of the base instruction set), so
     * one divpd does two divisions; elsewhere the same rounds run in scalar C.
     */
    #include <stdint.h>
    #if defined(__SSE2__) || defined(_M_X64) || (defined(_M_IX86_FP) && _M_IX86_FP >= 2)
    #include <emmintrin.h>
    #define LBC_JUMP_SSE2 1
    #endif
    #define LBC_JUMP_GROUP 8
    #define LBC_JUMP_LCG 2862933555777941757ULL

    static inline int32_t lbc_jump_finish(uint64_t key, int64_t b, int64_t buckets) {
        for (;;) {
            key = key * LBC_JUMP_LCG + 1;
            int64_t j = (int64_t)((double)(b + 1) * (2147483648.0 / (double)((key >> 33) + 1)));
            if (j >= buckets) return (int32_t)b;
            b = j;
        }
    }

    #ifdef LBC_JUMP_SSE2
    static void lbc_jump_group(uint64_t* key, int32_t* out, int32_t buckets, int steps) {
        const __m128d one = _mm_set1_pd(1.0), two31 = _mm_set1_pd(2147483648.0);
        const __m128d limit = _mm_set1_pd((double)buckets);
        __m128d b[LBC_JUMP_GROUP / 2], left[LBC_JUMP_GROUP / 2];
        int v, t;
        for (v = 0; v < LBC_JUMP_GROUP / 2; v++) {
            b[v] = _mm_setzero_pd();
            left[v] = _mm_setzero_pd();
        }
        for (t = 0; t < steps; t++) {
            for (v = 0; v < LBC_JUMP_GROUP / 2; v++) {
                uint64_t k0 = key[2 * v] * LBC_JUMP_LCG + 1, k1 = key[2 * v + 1] * LBC_JUMP_LCG + 1;
                key[2 * v] = k0;
                key[2 * v + 1] = k1;
                /* (key >> 33) < 2^31 fits an int32; + 1.0 is exact in a double */
                __m128d r = _mm_add_pd(
                    _mm_cvtepi32_pd(_mm_set_epi32(0, 0, (int)(k1 >> 33), (int)(k0 >> 33))), one);
                __m128d p = _mm_mul_pd(_mm_add_pd(b[v], one), _mm_div_pd(two31, r));
                /* trunc(p) >= buckets <=> p >= buckets; below it, p fits an int32 */
                __m128d j = _mm_cvtepi32_pd(_mm_cvttpd_epi32(_mm_min_pd(p, limit)));
                left[v] = _mm_or_pd(left[v], _mm_cmpge_pd(j, limit));
                b[v] = _mm_or_pd(_mm_and_pd(left[v], b[v]), _mm_andnot_pd(left[v], j));
            }
        }
        for (v = 0; v < LBC_JUMP_GROUP / 2; v++) {
            int done = _mm_movemask_pd(left[v]);
            __m128i bi = _mm_cvttpd_epi32(b[v]);
            int32_t b0 = _mm_cvtsi128_si32(bi), b1 = _mm_cvtsi128_si32(_mm_srli_si128(bi, 4));
            out[2 * v] = (done & 1) ? b0 : lbc_jump_finish(key[2 * v], b0, buckets);
            out[2 * v + 1] = (done & 2) ? b1 : lbc_jump_finish(key[2 * v + 1], b1, buckets);
        }
    }
    #else
    static void lbc_jump_group(uint64_t* key, int32_t* out, int32_t buckets, int steps) {
        int64_t b[LBC_JUMP_GROUP];
        int left[LBC_JUMP_GROUP];
        int l, t;
        for (l = 0; l < LBC_JUMP_GROUP; l++) {
            b[l] = 0;
            left[l] = 0;
        }
        for (t = 0; t < steps; t++) {
            for (l = 0; l < LBC_JUMP_GROUP; l++) {
                uint64_t k = key[l] * LBC_JUMP_LCG + 1;
                int64_t j = (int64_t)((double)(b[l] + 1) * (2147483648.0 / (double)((k >> 33) + 1)));
                key[l] = k;
                left[l] |= j >= buckets;
                b[l] = left[l] ? b[l] : j;
            }
        }
        for (l = 0; l < LBC_JUMP_GROUP; l++)
            out[l] = left[l] ? (int32_t)b[l] : lbc_jump_finish(key[l], b[l], buckets);
    }
    #endif
    """
    enum: LBC_JUMP_GROUP
    void lbc_jump_group(uint64_t* key, int32_t* out, int32_t buckets, int steps) noexcept nogil


cdef extern from *:
    """
    /* AVX2 paths of pick_many, chosen at run time (the module is built for baseline x86-64).
     *
     * lbc_hash_u64_x4 is hash_u64 (XXH3 of the key's 8 little-endian bytes, seed 0) on four
     * keys at a time: XXH3's 4-to-8-byte path, its 64-bit products built from 32-bit ones.
     *
     * lbc_jump_many_avx2 is the jump hash of lbc_jump_group on four lanes of doubles per
     * register, with the LCG and the key's hash on the vector unit too: the same operations as
     * the reference, so the same answers (tested against it). Keys still travelling after the
     * group's rounds finish alone with lbc_jump_finish.
     */
    #if defined(__GNUC__) && defined(__x86_64__)
    #include <immintrin.h>
    #define LBC_AVX2_FN __attribute__((target("avx2")))
    #define LBC_JUMP_VECTORS 6  /* registers of four keys in flight: enough to hide a division */

    static int lbc_cpu_has_avx2(void) {
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx2") != 0;
    }

    LBC_AVX2_FN static inline __m256i lbc_mul64_x4(__m256i a, __m256i c_lo, __m256i c_hi) {
        /* the low 64 bits of a * c: a_lo*c_lo + ((a_hi*c_lo + a_lo*c_hi) << 32) */
        __m256i cross = _mm256_add_epi64(_mm256_mul_epu32(_mm256_srli_epi64(a, 32), c_lo),
                                         _mm256_mul_epu32(a, c_hi));
        return _mm256_add_epi64(_mm256_mul_epu32(a, c_lo), _mm256_slli_epi64(cross, 32));
    }

    LBC_AVX2_FN static inline __m256i lbc_rotl64_x4(__m256i x, int r) {
        return _mm256_or_si256(_mm256_slli_epi64(x, r), _mm256_srli_epi64(x, 64 - r));
    }

    LBC_AVX2_FN static inline __m256i lbc_hash_u64_x4(__m256i v) {
        const __m256i bitflip = _mm256_set1_epi64x(
            (long long)(XXH_readLE64(XXH3_kSecret + 8) ^ XXH_readLE64(XXH3_kSecret + 16)));
        const __m256i m_lo = _mm256_set1_epi64x((long long)(PRIME_MX2 & 0xFFFFFFFFULL));
        const __m256i m_hi = _mm256_set1_epi64x((long long)(PRIME_MX2 >> 32));
        /* XXH3_len_4to8_64b: the two 32-bit halves swapped, then XXH3_rrmxmx */
        __m256i h = _mm256_xor_si256(_mm256_shuffle_epi32(v, _MM_SHUFFLE(2, 3, 0, 1)), bitflip);
        h = _mm256_xor_si256(h, _mm256_xor_si256(lbc_rotl64_x4(h, 49), lbc_rotl64_x4(h, 24)));
        h = lbc_mul64_x4(h, m_lo, m_hi);
        h = _mm256_xor_si256(h, _mm256_add_epi64(_mm256_srli_epi64(h, 35), _mm256_set1_epi64x(8)));
        h = lbc_mul64_x4(h, m_lo, m_hi);
        return _mm256_xor_si256(h, _mm256_srli_epi64(h, 28));
    }

    /* maglev entries of count keys into out: the hash and the entry, ((h >> 32) * m) >> 32, four
       keys at a time, then the four table reads; table16 or table32 is NULL; returns how many
       it did (whole registers) */
    LBC_AVX2_FN static Py_ssize_t lbc_maglev_many_avx2(const uint64_t* keys, int32_t* out, Py_ssize_t count,
                                                       const uint16_t* table16, const int32_t* table32,
                                                       uint64_t m) {
        const __m256i size = _mm256_set1_epi64x((long long)m);
        uint64_t entry[4];
        Py_ssize_t i = 0;
        for (; i + 4 <= count; i += 4) {
            __m256i h = lbc_hash_u64_x4(_mm256_loadu_si256((const __m256i*)(keys + i)));
            _mm256_storeu_si256((__m256i*)entry,
                                _mm256_srli_epi64(_mm256_mul_epu32(_mm256_srli_epi64(h, 32), size), 32));
            if (table16 != NULL) {
                out[i] = table16[entry[0]];
                out[i + 1] = table16[entry[1]];
                out[i + 2] = table16[entry[2]];
                out[i + 3] = table16[entry[3]];
            } else {
                out[i] = table32[entry[0]];
                out[i + 1] = table32[entry[1]];
                out[i + 2] = table32[entry[2]];
                out[i + 3] = table32[entry[3]];
            }
        }
        return i;
    }

    /* jump buckets of count keys into out; returns how many it did (whole groups) */
    LBC_AVX2_FN static Py_ssize_t lbc_jump_many_avx2(const uint64_t* keys, int32_t* out, Py_ssize_t count,
                                                     int32_t buckets, int steps) {
        const __m256i lcg_lo = _mm256_set1_epi64x((long long)(LBC_JUMP_LCG & 0xFFFFFFFFULL));
        const __m256i lcg_hi = _mm256_set1_epi64x((long long)(LBC_JUMP_LCG >> 32));
        const __m256i one64 = _mm256_set1_epi64x(1);
        /* (key >> 33) | bits of 2^52, as a double, is 2^52 + (key >> 33): minus 2^52 - 1 gives
           (key >> 33) + 1 exactly, the reference's divisor */
        const __m256i exp52 = _mm256_set1_epi64x(0x4330000000000000LL);
        const __m256d exp52_less_one = _mm256_set1_pd(4503599627370495.0);
        const __m256d one = _mm256_set1_pd(1.0), two31 = _mm256_set1_pd(2147483648.0);
        const __m256d limit = _mm256_set1_pd((double)buckets);
        const Py_ssize_t group = 4 * LBC_JUMP_VECTORS;
        Py_ssize_t base = 0;
        for (; base + group <= count; base += group) {
            __m256i key[LBC_JUMP_VECTORS];
            __m256d b[LBC_JUMP_VECTORS], left[LBC_JUMP_VECTORS];
            int v, t, l;
            for (v = 0; v < LBC_JUMP_VECTORS; v++) {
                key[v] = lbc_hash_u64_x4(_mm256_loadu_si256((const __m256i*)(keys + base + 4 * v)));
                b[v] = _mm256_setzero_pd();
                left[v] = _mm256_setzero_pd();
            }
            for (t = 0; t < steps; t++) {
                for (v = 0; v < LBC_JUMP_VECTORS; v++) {
                    key[v] = _mm256_add_epi64(lbc_mul64_x4(key[v], lcg_lo, lcg_hi), one64);
                    __m256d r = _mm256_sub_pd(
                        _mm256_castsi256_pd(_mm256_or_si256(_mm256_srli_epi64(key[v], 33), exp52)),
                        exp52_less_one);
                    __m256d p = _mm256_mul_pd(_mm256_add_pd(b[v], one), _mm256_div_pd(two31, r));
                    __m256d j = _mm256_round_pd(p, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
                    left[v] = _mm256_or_pd(left[v], _mm256_cmp_pd(j, limit, _CMP_GE_OQ));
                    b[v] = _mm256_blendv_pd(j, b[v], left[v]);
                }
            }
            for (v = 0; v < LBC_JUMP_VECTORS; v++) {
                int32_t* o = out + base + 4 * v;
                __m128i bi = _mm256_cvttpd_epi32(b[v]);
                int done = _mm256_movemask_pd(left[v]);
                _mm_storeu_si128((__m128i*)o, bi);
                if (done != 15) {
                    uint64_t k[4];
                    _mm256_storeu_si256((__m256i*)k, key[v]);
                    for (l = 0; l < 4; l++)
                        if (!((done >> l) & 1)) o[l] = lbc_jump_finish(k[l], o[l], buckets);
                }
            }
        }
        return base;
    }
    #else
    static int lbc_cpu_has_avx2(void) { return 0; }
    static Py_ssize_t lbc_maglev_many_avx2(const uint64_t* keys, int32_t* out, Py_ssize_t count,
                                           const uint16_t* table16, const int32_t* table32,
                                           uint64_t m) {
        return 0;
    }
    static Py_ssize_t lbc_jump_many_avx2(const uint64_t* keys, int32_t* out, Py_ssize_t count,
                                         int32_t buckets, int steps) {
        return 0;
    }
    #endif
    """
    bint lbc_cpu_has_avx2() noexcept nogil
    Py_ssize_t lbc_maglev_many_avx2(const uint64_t* keys, int32_t* out, Py_ssize_t count,
                                    const uint16_t* table16, const int32_t* table32,
                                    uint64_t m) noexcept nogil
    Py_ssize_t lbc_jump_many_avx2(const uint64_t* keys, int32_t* out, Py_ssize_t count,
                                  int32_t buckets, int steps) noexcept nogil


use_avx2 = lbc_cpu_has_avx2()


def _avx2(enabled=None) -> bool:
    """Whether pick_many uses its AVX2 paths; ``enabled`` turns them on (if the CPU has AVX2) or
    off, for tests and benchmarks of both paths."""
    global use_avx2
    if enabled is not None:
        use_avx2 = bool(enabled) and lbc_cpu_has_avx2()
    return use_avx2


cdef int jump_steps(int n) noexcept:
    """Rounds every key of a group runs: the mean number of divisions of a key, H(n) (one per
    bucket it lands in, and the last), plus 1.7 standard deviations: about 2% of the keys need
    more and finish alone."""
    cdef double h = log(n) + 0.5772156649015329 + 0.5 / n
    cdef double h2 = 1.6449340668482264 - 1.0 / n
    cdef double sd = (h - h2) ** 0.5 if h > h2 else 0.0
    return max(2, min(64, <int>ceil(h + 1.7 * sd)))


cdef class JumpHash(Balancer):
    """Jump consistent hash over slots 0..n-1. No table: memory is one int per backend.

    Jump only ever removes the last slot cheaply, so backends keep their slots across
    ``update``: a new backend takes a new last slot (moving 1/(n+1) of the keys), and a removed
    backend's slot goes to the backend of the last slot, so removing the last one moves 1/n of the
    keys and removing another about 2/n. Jump has no weights: they must all be equal.
    """

    name = "jump"
    cdef object _slots           # slot -> backend name
    cdef object _slot_arr
    cdef const int32_t* slot_backend
    cdef int steps               # branch-free rounds of pick_many (see jump_steps)
    cdef bint slots_identity     # slot i is backend i: pick_many skips the mapping

    def __init__(self, backends, weights=None, *, seed=None):
        self._slots = []
        Balancer.__init__(self, backends, weights, seed=seed)

    def _check_update(self, names, weights) -> None:
        if len(set(weights)) > 1:
            raise ValueError(f"{self.name}: jump hash has no weights; weights must all be equal, "
                             f"not {list(weights)!r}")

    def _extra_nbytes(self) -> int:
        return self.n * sizeof(int32_t)

    @property
    def slots(self) -> tuple:
        """Slot -> backend index."""
        return tuple(self._slot_arr.tolist())

    cdef int _rebuild(self) except -1:
        keep = set(self._names)
        slots = list(self._slots)
        i = 0
        while i < len(slots):
            if slots[i] in keep:
                i += 1
                continue
            while slots and slots[len(slots) - 1] not in keep:
                slots.pop()
            if i < len(slots):
                slots[i] = slots.pop()
                i += 1
        have = set(slots)
        slots.extend(nm for nm in self._names if nm not in have)
        index = {nm: k for k, nm in enumerate(self._names)}
        slot_arr = np.asarray([index[nm] for nm in slots], dtype=np.int32)
        cdef int32_t[::1] view = slot_arr
        self._slots = slots
        self._slot_arr = slot_arr
        self.slot_backend = &view[0]
        self.steps = jump_steps(self.n)
        self.slots_identity = bool((slot_arr == np.arange(self.n, dtype=np.int32)).all())
        return 0

    cdef int pick_hash(self, uint64_t h) noexcept nogil:
        return self.slot_backend[jump_hash(h, self.n)]

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef void pick_many_c(self, const uint64_t* keys, int32_t* out, Py_ssize_t count) noexcept nogil:
        cdef Py_ssize_t k, base = 0, whole = count - count % LBC_JUMP_GROUP
        cdef int32_t n = self.n
        cdef int steps = self.steps, l
        cdef const int32_t* slots = self.slot_backend
        cdef uint64_t group[LBC_JUMP_GROUP]
        if use_avx2:
            base = lbc_jump_many_avx2(keys, out, count, n, steps)
        while base < whole:
            for l in range(LBC_JUMP_GROUP):
                group[l] = hash_u64(keys[base + l])
            lbc_jump_group(group, out + base, n, steps)
            base += LBC_JUMP_GROUP
        for k in range(base, count):
            out[k] = jump_hash(hash_u64(keys[k]), n)
        if not self.slots_identity:
            for k in range(count):
                out[k] = slots[out[k]]


cdef class Rendezvous(Balancer):
    """Highest random weight (Thaler and Ravishankar): the backend whose score for the key is the
    highest wins. The score mixes the key's hash with the backend's name hash; with weights it is
    ``weight / -ln(u)`` for that mix as ``u`` in (0, 1) (Schindelhauer and Schomaker), so a
    backend wins in proportion to its weight. A pick is O(n); removing a backend moves exactly its
    keys and no other.
    """

    name = "rendezvous"
    cdef object _seed_arr
    cdef const uint64_t* seeds
    cdef bint equal

    def __init__(self, backends, weights=None, *, seed=None):
        Balancer.__init__(self, backends, weights, seed=seed)

    def _extra_nbytes(self) -> int:
        return self.n * sizeof(uint64_t)

    cdef int _rebuild(self) except -1:
        seed_arr = np.asarray([name_hash(nm, 0x52656E64657A766FULL) for nm in self._names],
                              dtype=np.uint64)
        cdef uint64_t[::1] view = seed_arr
        self._seed_arr = seed_arr
        self.seeds = &view[0]
        self.equal = _all_equal(self.w, self.n)
        return 0

    @cython.cdivision(True)
    cdef int pick_hash(self, uint64_t h) noexcept nogil:
        cdef int i, best = 0
        cdef uint64_t s, top = 0
        cdef double score, best_score = -1.0
        if self.equal:
            for i in range(self.n):
                s = mix64(h ^ self.seeds[i])
                if s > top or i == 0:
                    top = s
                    best = i
            return best
        for i in range(self.n):
            if self.w[i] <= 0:
                continue
            s = mix64(h ^ self.seeds[i])
            score = self.w[i] / -log(((s >> 11) + 0.5) * (1.0 / 9007199254740992.0))
            if score > best_score:
                best_score = score
                best = i
        return best


cdef _check_int(str algorithm, str field, object value, long minimum):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{algorithm}: {field} must be an integer >= {minimum}, not {value!r}")


ALGORITHMS = {
    cls.name: cls
    for cls in (RoundRobin, WeightedRoundRobin, WeightedRandom, LeastConn, RingHash, Maglev,
                JumpHash, Rendezvous, BoundedLoad)
}
