# cython: language_level=3
"""The pick policy in C, shared by ``lbcore.Picker``'s compiled core and the socket data path."""

from libc.stdint cimport int32_t, uint32_t, uint64_t

from lbcore.core._conntrack_c cimport ct_key


cdef struct PickSet:
    # the endpoints of one service port, by id (the id an AffinityTable stores)
    void* balancer          # a compiled lbcore Balancer over the eligible endpoints, or NULL
    void* affinity          # an AffinityTable (ClientIP session affinity), or NULL
    const int32_t* bal_ids  # balancer index -> id
    int nbal
    const int32_t* bidx     # id -> balancer index, or -1: takes no new connection
    const double* down      # id -> marked down until (a monotonic time)
    int nids


cdef uint64_t client_ip_hash(const ct_key* client) noexcept nogil
cdef int32_t choose(const PickSet* ps, uint64_t h, const int32_t* excl, int nexcl,
                    double now) noexcept nogil
cdef int32_t pick_new(const PickSet* ps, const ct_key* client, uint64_t ha, uint32_t ta,
                      uint64_t h, const int32_t* excl, int nexcl, double now) noexcept nogil
