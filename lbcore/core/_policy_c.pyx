# cython: language_level=3, embedsignature=True
"""The pick policy of a new connection, in C: one copy for every data path.

``lbcore.Picker``'s compiled core (``_picker_c``) and the socket frontend's engine
(``lbcore_plugins._proxy_c``) both call ``pick_new``; the readable twin is
``lbcore.core._picker_py.PickCore``. For a connection the connection table does not know:

1. ClientIP session affinity, when the service asks for it: the client's endpoint, if it still
   takes new connections, is neither excluded nor marked down (the lookup refreshes the binding);
2. else the balancer's choice for the key hash ``h``; when that endpoint is excluded (it refused
   this connection) or marked down, the balancer is asked again (``pick_hash_retry``, up to
   ``REPICKS`` times), so the share of an endpoint that is down is spread over the others as
   the algorithm spreads keys, not handed to its neighbour; failing that, the next allowed one
   in balancer order. A down endpoint is chosen only when every other one is down too. The
   choice becomes the client's affinity.

The hash key. Affinity keys by the client's IP (the Service API's definition). Hashed
algorithms (ring_hash, maglev, jump, rendezvous, bounded_load) key by what ``hash_key`` says:
by default the client IP (``client_ip_hash``), so a client's connections stay on one endpoint
and move only when the ring changes, as HAProxy's ``balance source`` and IPVS's ``sh`` do; that
is what a consistent hash is chosen for. ``five_tuple`` spreads one client's connections instead.
The other algorithms ignore the key.

Every function runs without the GIL and takes no lock: the caller holds whatever serializes its
picks (the GIL in the Picker, the service's mutex in the engine).
"""

from libc.stdint cimport int32_t, uint32_t, uint64_t

from lbcore.core._balancers_c cimport Balancer
from lbcore.core._conntrack_c cimport AffinityTable, ct_key
from lbcore.core._hashing_c cimport XXH3_64bits


cdef uint64_t client_ip_hash(const ct_key* client) noexcept nogil:
    """The hashed algorithms' default key: XXH3 of the client's IP (4 bytes for IPv4, 16 for
    IPv6), as ``lbcore.hash64(ipaddress.ip_address(ip).packed)`` gives it."""
    cdef const unsigned char* a = client.addr
    cdef int i
    for i in range(10):
        if a[i] != 0:
            return XXH3_64bits(a, 16)
    if a[10] == 0xFF and a[11] == 0xFF:  # IPv4 as ::ffff:a.b.c.d
        return XXH3_64bits(a + 12, 4)
    return XXH3_64bits(a, 16)


cdef enum:
    REPICKS = 4  # new picks before walking the balancer's order


cdef inline bint excluded(int32_t ident, const int32_t* excl, int nexcl) noexcept nogil:
    cdef int x
    for x in range(nexcl):
        if excl[x] == ident:
            return True
    return False


cdef int32_t choose(const PickSet* ps, uint64_t h, const int32_t* excl, int nexcl,
                    double now) noexcept nogil:
    """The balancer's endpoint for key hash ``h``, else the next allowed one in balancer order;
    -1 when none is allowed (or there is no balancer)."""
    cdef int first, j, honour, attempt, i
    cdef int32_t ident
    if ps.balancer == NULL or ps.nbal == 0:
        return -1
    first = (<Balancer>ps.balancer).pick_hash(h)
    if first < 0 or first >= ps.nbal:
        return -1
    i = first
    for attempt in range(REPICKS + 1):
        if attempt > 0:
            i = (<Balancer>ps.balancer).pick_hash_retry(h, attempt)
            if i < 0 or i >= ps.nbal:
                break
        ident = ps.bal_ids[i]
        if not ps.down[ident] > now and not excluded(ident, excl, nexcl):
            return ident
    for honour in range(1, -1, -1):  # down marks count unless every candidate is down
        for j in range(ps.nbal):
            ident = ps.bal_ids[(first + j) % ps.nbal]
            if honour and ps.down[ident] > now:
                continue
            if not excluded(ident, excl, nexcl):
                return ident
    return -1


cdef int32_t pick_new(const PickSet* ps, const ct_key* client, uint64_t ha, uint32_t ta,
                      uint64_t h, const int32_t* excl, int nexcl, double now) noexcept nogil:
    """The endpoint id of a new connection (see the module docstring): -1 for none, -2 when the
    affinity table has no memory for the binding.

    :param client: the client's affinity key (its IP; only read when ``ps.affinity`` is set).
    :param ha: the affinity table's hash of ``client``; ``ta`` the table's time.
    :param h: the balancer's key hash.
    """
    cdef int32_t a
    if ps.affinity != NULL:
        a = (<AffinityTable>ps.affinity).lookup_h(client, ha, ta)
        if (0 <= a < ps.nids and ps.bidx[a] >= 0 and not ps.down[a] > now
                and not excluded(a, excl, nexcl)):
            return a
    a = choose(ps, h, excl, nexcl, now)
    if a >= 0 and ps.affinity != NULL:
        if (<AffinityTable>ps.affinity).insert_h(client, ha, a, ta) < 0:
            return -2
    return a
