# cython: language_level=3, embedsignature=True
"""The Picker's compiled core: connection table, affinity and balancer in one C call.

It does exactly what ``lbcore.model.picker._PickCorePy`` does (the tests hold the two to each other),
with the tables and the balancer reached through their C interfaces: a pick costs one key
packing, one or two table probes and, for a new connection, one balancer pick and an insert.
"""

cimport cython
from cpython.pythread cimport (
    NOWAIT_LOCK,
    WAIT_LOCK,
    PyThread_acquire_lock,
    PyThread_allocate_lock,
    PyThread_free_lock,
    PyThread_release_lock,
    PyThread_type_lock,
)
from libc.stdint cimport int32_t, uint8_t, uint32_t, uint64_t
from libc.math cimport isfinite
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset

from lbcore.core._balancers_c cimport Balancer
from lbcore.core._conntrack_c cimport (
    CT_KEY_BYTES,
    AffinityTable,
    ConnTable,
    ct_hash,
    ct_key,
    pack_addr,
    pack_port,
    pack_proto,
)
from lbcore.core._hashing_c cimport XXH3_64bits
from lbcore.core._policy_c cimport PickSet, client_ip_hash, pick_new

from lbcore.core._picker_py import NO_ENDPOINTS

cdef enum:
    MAX_EXCLUDE = 16


cdef class PickCore:
    """Compiled twin of the Picker's core (see ``lbcore.model.picker``)."""

    cdef ConnTable conns
    cdef AffinityTable affinity
    cdef Balancer balancer
    cdef object clock
    cdef list eps                 # id -> EndpointInfo or None
    cdef dict id_of               # (ip, port) -> id
    cdef Py_ssize_t nids
    cdef Py_ssize_t nbal
    cdef int32_t* bidx            # id -> balancer index, or -1 when it takes no new connection
    cdef int32_t* bal_ids         # balancer index -> id
    cdef double* down             # id -> marked down until
    cdef PyThread_type_lock mutex
    cdef int writers              # lock() holders: while above 0, picks wait for the mutex
    cdef unsigned long gen        # endpoint sets installed so far
    cdef object no_endpoints
    cdef object last_dst          # the last destination parsed (a service's own address)
    cdef bint five_tuple          # hashed algorithms key by the 5-tuple, not the client IP
    cdef uint8_t last_dst_key[16]

    def __cinit__(self, ConnTable conns, AffinityTable affinity, clock, str hash_key="client_ip"):
        self.mutex = PyThread_allocate_lock()
        if self.mutex == NULL:
            raise MemoryError("PickCore: no lock")
        self.bidx = NULL
        self.bal_ids = NULL
        self.down = NULL
        self.writers = 0
        self.gen = 0
        self.last_dst = None

    def __init__(self, ConnTable conns, AffinityTable affinity, clock, str hash_key="client_ip"):
        if hash_key not in ("client_ip", "five_tuple"):
            raise ValueError(f'hash_key: must be "client_ip" or "five_tuple", got {hash_key!r}')
        self.five_tuple = hash_key == "five_tuple"
        self.conns = conns
        self.affinity = affinity
        self.clock = clock
        self.no_endpoints = NO_ENDPOINTS
        self.install([], {}, [], None)

    def __dealloc__(self):
        if self.mutex != NULL:
            PyThread_free_lock(self.mutex)
        free(self.bidx)
        free(self.bal_ids)
        free(self.down)

    cdef inline void _lock(self) noexcept:
        if not PyThread_acquire_lock(self.mutex, NOWAIT_LOCK):
            with nogil:
                PyThread_acquire_lock(self.mutex, WAIT_LOCK)

    def lock(self) -> None:
        """Take the core's lock (``update`` holds it while it swaps the endpoint set); until
        ``unlock``, every pick, close and mark_down waits for it."""
        self._lock()
        self.writers += 1

    def unlock(self) -> None:
        """Give the core's lock back."""
        self.writers -= 1
        PyThread_release_lock(self.mutex)

    def install(self, list eps, dict id_of, list bal_ids, balancer) -> None:
        """Take a new endpoint set (call with the lock held)."""
        cdef Py_ssize_t n = len(eps), m = len(bal_ids), i
        cdef int32_t* bidx = <int32_t*>malloc(sizeof(int32_t) * (n + 1))
        cdef int32_t* ids = <int32_t*>malloc(sizeof(int32_t) * (m + 1))
        cdef double* down = <double*>malloc(sizeof(double) * (n + 1))
        if bidx == NULL or ids == NULL or down == NULL:
            free(bidx)
            free(ids)
            free(down)
            raise MemoryError("PickCore: no memory for the endpoint arrays")
        for i in range(n):
            bidx[i] = -1
            down[i] = 0.0
        for i in range(m):
            ids[i] = bal_ids[i]
            bidx[ids[i]] = <int32_t>i
        free(self.bidx)
        free(self.bal_ids)
        free(self.down)
        self.bidx, self.bal_ids, self.down = bidx, ids, down
        self.eps = list(eps)
        self.id_of = dict(id_of)
        self.nids = n
        self.nbal = m
        self.balancer = balancer
        self.gen += 1

    def mark_down(self, Py_ssize_t ident, double until) -> None:
        """No new connection for endpoint ``ident`` before ``until``."""
        if self.writers == 0:  # the GIL is the lock (see _pick_py)
            if 0 <= ident < self.nids:
                self.down[ident] = until
            return
        self._lock()
        try:
            if 0 <= ident < self.nids:
                self.down[ident] = until
        finally:
            PyThread_release_lock(self.mutex)

    cdef int _excluded(self, object exclude, int32_t* out) except -1:
        cdef int n = 0
        for item in exclude:
            if n == MAX_EXCLUDE:
                break
            if isinstance(item, int):
                out[n] = item
                n += 1
            elif hasattr(item, "ip"):  # an endpoint (lbcore.EndpointInfo)
                ident = self.id_of.get((item.ip, item.port))
                if ident is not None:
                    out[n] = ident
                    n += 1
        return n

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef int32_t _pick(self, ct_key* k, double now, const int32_t* excl, int nexcl) except -2:
        cdef uint32_t t = self.conns.now_ms(now)
        cdef uint32_t ta = 0
        cdef uint64_t hk = ct_hash(k, self.conns.seed)  # the table's, once for its probe and its insert
        cdef uint64_t ha = 0
        cdef uint64_t h
        cdef int32_t b, chosen
        cdef int x
        cdef bint ok
        cdef ct_key client
        cdef PickSet ps
        if self.affinity is not None:
            # start fetching the client's affinity slot now, so a new connection's two probes
            # overlap instead of paying two cache misses one after the other
            memset(&client, 0, sizeof(ct_key))
            memcpy(client.addr, k.addr, 16)
            ha = ct_hash(&client, self.affinity.seed)
            self.affinity.prefetch_h(ha)
        b = self.conns.lookup_h(k, hk, t)
        if 0 <= b < self.nids and self.eps[b] is not None:
            ok = True
            for x in range(nexcl):
                if excl[x] == b:
                    ok = False
            if ok:
                return b
        # a new connection: the pick policy every data path shares (lbcore.core._policy_c)
        if self.affinity is None:  # a tracked connection never needs the client's key
            memset(&client, 0, sizeof(ct_key))
            memcpy(client.addr, k.addr, 16)
        ps.balancer = <void*>self.balancer if self.balancer is not None else NULL
        ps.affinity = <void*>self.affinity if self.affinity is not None else NULL
        ps.bal_ids, ps.nbal, ps.bidx, ps.down, ps.nids = self.bal_ids, self.nbal, self.bidx, self.down, self.nids
        if self.affinity is not None:
            ta = self.affinity.now_ms(now)
        h = XXH3_64bits(k, CT_KEY_BYTES) if self.five_tuple else client_ip_hash(&client)
        chosen = pick_new(&ps, &client, ha, ta, h, excl, nexcl, now)
        if chosen == -2:
            raise MemoryError("AffinityTable: no memory for the per-backend lists")
        if chosen < 0:
            return -1
        if 0 <= b < self.nids and b != chosen and self.bidx[b] >= 0:
            self.balancer.release_c(self.bidx[b])
        if self.conns.insert_h(k, hk, chosen, t) < 0:
            raise MemoryError("ConnTable: no memory for the per-backend lists")
        self.balancer.acquire_c(self.bidx[chosen])
        return chosen

    cdef inline int _key(self, ct_key* k, proto, src, sport, dst, dport) except -1:
        memset(k, 0, sizeof(ct_key))
        pack_proto(proto, &k.proto)
        pack_addr(src, k.addr, "src")
        if dst is self.last_dst:  # the same object: the same address (str and bytes are immutable)
            memcpy(k.addr + 16, self.last_dst_key, 16)
        else:
            pack_addr(dst, k.addr + 16, "dst")
            memcpy(self.last_dst_key, k.addr + 16, 16)
            self.last_dst = dst
        pack_port(sport, &k.sport, "sport")
        pack_port(dport, &k.dport, "dport")
        return 0

    cdef int32_t _pick_py(self, proto, src, sport, dst, dport, now, exclude) except -2:
        # Locking rule: every entry point runs with the GIL held, and the work between the check
        # of ``writers`` and the return runs no Python code (no bytecode, so no switch of the GIL
        # to another thread). So while no ``lock()`` is held, the GIL alone serializes picks,
        # closes and mark_downs, and the mutex (50-100 ns a pair) is only taken while an update
        # holds it. Anything that can run Python code (the clock, the exclusion list, the key's
        # parsing and its errors) happens before that check.
        cdef ct_key k
        cdef int32_t excl[MAX_EXCLUDE]
        cdef int nexcl = 0
        cdef double t
        cdef unsigned long gen = self.gen
        self._key(&k, proto, src, sport, dst, dport)
        t = self.clock() if now is None else now
        if not isfinite(t):
            self.conns.now_ms(t)  # raises the table's error for a time that is no number
        if exclude:
            nexcl = self._excluded(exclude, excl)
        if self.writers == 0 and self.gen == gen:
            return self._pick(&k, t, excl, nexcl)
        self._lock()
        try:
            if exclude:  # ids may have changed while this thread waited
                nexcl = self._excluded(exclude, excl)
            return self._pick(&k, t, excl, nexcl)
        finally:
            PyThread_release_lock(self.mutex)

    @cython.binding(False)
    def pick(self, proto, src, sport, dst, dport, now=None, exclude=None):
        """The EndpointInfo for this connection, or NO_ENDPOINTS."""
        cdef int32_t i = self._pick_py(proto, src, sport, dst, dport, now, exclude)
        if i < 0:
            return self.no_endpoints
        return self.eps[i]

    @cython.binding(False)
    def pick_index(self, proto, src, sport, dst, dport, now=None, exclude=None) -> int:
        """The endpoint id for this connection, or -1."""
        return self._pick_py(proto, src, sport, dst, dport, now, exclude)

    @cython.binding(False)
    def close(self, proto, src, sport, dst, dport, now=None) -> bool:
        """This connection ended; False when it was not open."""
        cdef ct_key k
        cdef double t
        self._key(&k, proto, src, sport, dst, dport)
        t = self.clock() if now is None else now
        if not isfinite(t):
            self.conns.now_ms(t)  # raises the table's error for a time that is no number
        if self.writers == 0:  # the GIL is the lock (see _pick_py)
            return self._close(&k, t)
        self._lock()
        try:
            return self._close(&k, t)
        finally:
            PyThread_release_lock(self.mutex)

    cdef bint _close(self, ct_key* k, double now) except -1:
        cdef uint32_t t = self.conns.now_ms(now)
        cdef int32_t b = self.conns.lookup_c(k, t)
        if b < 0 or not self.conns.close_c(k, t):
            return False
        if b < self.nids and self.bidx[b] >= 0:
            self.balancer.release_c(self.bidx[b])
        return True
