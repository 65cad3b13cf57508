# cython: language_level=3, embedsignature=True
"""C-level view of the connection and affinity tables (``from lbcore.core._conntrack_c cimport ...``).

Both tables share one flat layout (see ``_conntrack_c.pyx``): a slab of fixed 56-byte entries and
an open-addressing index of 32-bit slots. Compiled callers (the Picker's fast path) use the
``cdef`` methods below with keys already packed into a ``ct_key`` (its pad bytes zero); the
``_h`` methods take ``ct_hash(k, table.seed)``, computed once by a caller that probes and then inserts. No
method releases the GIL while it changes the table, which is what makes one table safe to share
between threads.
"""

cimport cython
from libc.stdint cimport int32_t, uint8_t, uint16_t, uint32_t, uint64_t


cdef extern from *:
    """
    /* A packed key: hashed over its first 37 bytes (addr, ports, proto). */
    typedef struct {
        uint8_t  addr[32];     /* source then destination, 16 bytes each; IPv4 as ::ffff:a.b.c.d */
        uint16_t sport, dport;
        uint8_t  proto;
        uint8_t  pad[3];
    } ct_key;

    /* One table entry: 56 bytes. Links are 24-bit entry numbers (CT_NIL = none), which caps a
       table at 16,777,214 entries and keeps an entry plus its share of the index under 64 bytes. */
    typedef struct {
        uint8_t  addr[32];
        uint16_t sport, dport;
        uint32_t stamp;        /* last use, milliseconds since the table's epoch */
        uint32_t meta;         /* backend: bits 0-22, closing: bit 23, protocol: bits 24-31 */
        uint8_t  link[12];     /* class prev, class next, backend prev, backend next */
    } ct_entry;

    #define CT_NIL 0xFFFFFFu
    #define CT_EMPTY 0xFFFFFFFFu
    #define CT_MAX_BACKEND 0x7FFFFF
    #define CT_MAX_CAPACITY 0xFFFFFEu
    #define CT_CLOSING 0x800000u
    #define CT_KEY_BYTES 37
    #define ct_prefetch(p) __builtin_prefetch(p)

    /* The tables' own hash of a key: the home slot (high 32 bits) and the tag (low 8 bits). The
       key's five 8-byte words are mixed by 64x64->128-bit multiplications folded to 64 bits (the
       step of wyhash), three of them independent: a few cycles, against 20 ns for XXH3 over the
       37 bytes of a key just written by narrow stores, whose unaligned loads cannot be forwarded
       from those stores. The words are read as written, whole (see ``_key``). */
    static inline uint64_t ct_mix(uint64_t a, uint64_t b) {
    #if defined(__SIZEOF_INT128__)
        __uint128_t r = (__uint128_t)a * b;
        return (uint64_t)r ^ (uint64_t)(r >> 64);
    #else
        uint64_t al = (uint32_t)a, ah = a >> 32, bl = (uint32_t)b, bh = b >> 32;
        uint64_t ll = al * bl, lh = al * bh, hl = ah * bl, hh = ah * bh;
        uint64_t mid = (ll >> 32) + (uint32_t)lh + (uint32_t)hl;
        return ((ll & 0xFFFFFFFFu) | (mid << 32)) ^ (hh + (lh >> 32) + (hl >> 32) + (mid >> 32));
    #endif
    }
    /* The hash's five constants keyed with a table's seed: the seed is the table's secret
       (random at its creation), so which keys collide cannot be worked out from outside and a
       client cannot choose ports or addresses that pile up in one probe run. w4 holds 40 bits at
       most and the seed touches only those bits of its constant, so w4 ^ that constant is never
       0 (a zero factor would drop the other words). A batch keys them once, not per row. */
    typedef struct { uint64_t k0, k1, k2, k3, k4; } ct_keys;
    static inline ct_keys ct_keys_of(uint64_t seed) {
        ct_keys K = {0xa0761d6478bd642full ^ seed, 0xe7037ed1a0b428dbull ^ seed,
                     0x8ebc6af09c88c6e3ull ^ seed, 0x589965cc75374cc3ull ^ seed,
                     0x1d8e4e27c47d124full ^ (seed & 0xFFFFFFFFFFull)};
        return K;
    }
    static inline uint64_t ct_hash_keyed(uint64_t w0, uint64_t w1, uint64_t w2, uint64_t w3,
                                         uint64_t w4, const ct_keys* K) {
        return ct_mix(ct_mix(w0 ^ K->k0, w1 ^ K->k1) ^ ct_mix(w2 ^ K->k2, w3 ^ K->k3), w4 ^ K->k4);
    }
    static inline uint64_t ct_load64(const void* p) { uint64_t v; memcpy(&v, p, 8); return v; }
    #if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    #define CT_TAIL_MASK 0xFFFFFFFFFF000000ull
    #else
    #define CT_TAIL_MASK 0x000000FFFFFFFFFFull
    #endif
    static inline uint64_t ct_hash(const ct_key* k, uint64_t seed) {
        const uint8_t* b = (const uint8_t*)k;
        ct_keys K = ct_keys_of(seed);
        return ct_hash_keyed(ct_load64(b), ct_load64(b + 8), ct_load64(b + 16), ct_load64(b + 24),
                             ct_load64(b + 32) & CT_TAIL_MASK, &K);  /* ports and protocol, no pad */
    }
    static inline uint64_t ct_entry_hash(const ct_entry* x, uint64_t seed) {
        ct_key k;
        memcpy(&k, x, 36);  /* addresses and ports: the key's layout */
        k.proto = (uint8_t)(x->meta >> 24);
        return ct_hash(&k, seed);
    }

    /* A link is read and written as the 32-bit word around its 3 bytes (links 0 to 2 from their
       first byte, link 3 from the byte before it, so always inside the entry): one load and one
       store instead of three byte operations each. The two links of one list are written as one
       64-bit word, so the second write does not wait for the first one's store to reach the
       cache (a partly overlapping store cannot be forwarded to a load). Little-endian only; other
       machines keep the byte operations. */
    #if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    static inline uint32_t ct_link(const ct_entry* e, int k) {
        uint32_t w;
        if (k < 3) { memcpy(&w, e->link + 3 * k, 4); return w & 0xFFFFFFu; }
        memcpy(&w, e->link + 8, 4);
        return w >> 8;
    }
    static inline void ct_set_link(ct_entry* e, int k, uint32_t v) {
        uint32_t w;
        if (k < 3) {
            memcpy(&w, e->link + 3 * k, 4);
            w = (w & 0xFF000000u) | v;
            memcpy(e->link + 3 * k, &w, 4);
        } else {
            memcpy(&w, e->link + 8, 4);
            w = (w & 0xFFu) | (v << 8);
            memcpy(e->link + 8, &w, 4);
        }
    }
    /* k is 0 (class list) or 2 (backend list) */
    static inline void ct_set_links(ct_entry* e, int k, uint32_t prev, uint32_t next) {
        uint64_t w, pair = (uint64_t)prev | ((uint64_t)next << 24);
        if (k == 0) {
            memcpy(&w, e->link, 8);
            w = (w & 0xFFFF000000000000ull) | pair;
            memcpy(e->link, &w, 8);
        } else {
            memcpy(&w, e->link + 4, 8);
            w = (w & 0xFFFFull) | (pair << 16);
            memcpy(e->link + 4, &w, 8);
        }
    }
    #else
    static inline uint32_t ct_link(const ct_entry* e, int k) {
        const uint8_t* p = e->link + 3 * k;
        return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16);
    }
    static inline void ct_set_link(ct_entry* e, int k, uint32_t v) {
        uint8_t* p = e->link + 3 * k;
        p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); p[2] = (uint8_t)(v >> 16);
    }
    static inline void ct_set_links(ct_entry* e, int k, uint32_t prev, uint32_t next) {
        ct_set_link(e, k, prev);
        ct_set_link(e, k + 1, next);
    }
    #endif
    """
    ctypedef struct ct_key:
        uint8_t addr[32]
        uint16_t sport
        uint16_t dport
        uint8_t proto
        uint8_t pad[3]

    ctypedef struct ct_entry:
        uint8_t addr[32]
        uint16_t sport
        uint16_t dport
        uint32_t stamp
        uint32_t meta
        uint8_t link[12]

    uint32_t CT_NIL
    uint32_t CT_EMPTY
    int32_t CT_MAX_BACKEND
    uint32_t CT_MAX_CAPACITY
    uint32_t CT_CLOSING
    size_t CT_KEY_BYTES
    uint32_t ct_link(const ct_entry* e, int k) noexcept nogil
    void ct_set_link(ct_entry* e, int k, uint32_t v) noexcept nogil
    void ct_set_links(ct_entry* e, int k, uint32_t prev, uint32_t next) noexcept nogil
    void ct_prefetch(const void* p) noexcept nogil
    ctypedef struct ct_keys:
        uint64_t k0, k1, k2, k3, k4
    ct_keys ct_keys_of(uint64_t seed) noexcept nogil
    uint64_t ct_hash_keyed(uint64_t w0, uint64_t w1, uint64_t w2, uint64_t w3,
                           uint64_t w4, const ct_keys* K) noexcept nogil
    uint64_t ct_hash(const ct_key* k, uint64_t seed) noexcept nogil
    uint64_t ct_entry_hash(const ct_entry* x, uint64_t seed) noexcept nogil


cdef class _FlatTable:
    cdef ct_entry* e                 # capacity entries
    cdef uint32_t* idx               # nslots index slots: (tag << 24) | entry, or CT_EMPTY
    cdef uint32_t nslots
    cdef uint64_t seed               # the key hash's secret (see ct_keys_of)
    cdef readonly uint32_t capacity
    cdef uint32_t used
    cdef uint32_t free_head
    cdef uint32_t head[3]
    cdef uint32_t tail[3]
    cdef uint32_t timeout_ms[3]
    cdef uint8_t order[3]            # classes in the order expiry and eviction ties visit them
    cdef uint8_t norder
    cdef uint8_t cls_of_proto[256]
    cdef uint32_t* bhead             # per backend id: first entry of its list
    cdef uint32_t* bcount            # per backend id: entries in its list
    cdef uint32_t nb                 # length of bhead / bcount
    cdef double epoch
    cdef bint has_epoch
    cdef bint pending                # an insert not applied yet (see ConnTable.insert)
    cdef int32_t pend_backend
    cdef uint32_t pend_now
    cdef uint64_t pend_hash
    cdef ct_key pend_key

    cdef void _reset(self) noexcept
    @cython.final
    cdef uint32_t now_ms(self, double now) except? 0xFFFFFFFF
    cdef void _rebase(self, double d) noexcept
    @cython.final
    cdef uint32_t _find(self, const ct_key* k, uint64_t h, uint32_t* slot) noexcept nogil
    @cython.final
    cdef uint32_t _first_empty(self, uint64_t h) noexcept nogil
    @cython.final
    cdef uint32_t _slot_of(self, uint32_t i) noexcept nogil
    @cython.final
    cdef void _delete_slot(self, uint32_t j) noexcept nogil
    @cython.final
    cdef int _class_of(self, const ct_entry* x) noexcept nogil
    @cython.final
    cdef void _cls_unlink(self, uint32_t i, int c) noexcept nogil
    @cython.final
    cdef void _cls_append(self, uint32_t i, int c) noexcept nogil
    @cython.final
    cdef void _b_unlink(self, uint32_t i, uint32_t b) noexcept nogil
    @cython.final
    cdef void _b_push(self, uint32_t i, uint32_t b) noexcept nogil
    @cython.final
    cdef int _ensure_backend(self, int32_t b) noexcept nogil
    @cython.final
    cdef void _drop(self, uint32_t i, uint32_t slot) noexcept nogil
    @cython.final
    cdef void _evict_one(self, uint32_t now) noexcept nogil
    @cython.final
    cdef int32_t lookup_c(self, const ct_key* k, uint32_t now) noexcept nogil
    @cython.final
    cdef int32_t lookup_h(self, const ct_key* k, uint64_t h, uint32_t now) noexcept nogil
    @cython.final
    cdef int insert_h(self, const ct_key* k, uint64_t h, int32_t backend, uint32_t now) noexcept nogil
    @cython.final
    cdef void prefetch_h(self, uint64_t h) noexcept nogil
    @cython.final
    cdef int insert_c(self, const ct_key* k, int32_t backend, uint32_t now) noexcept nogil
    @cython.final
    cdef bint remove_c(self, const ct_key* k) noexcept nogil
    @cython.final
    cdef bint close_c(self, const ct_key* k, uint32_t now) noexcept nogil
    @cython.final
    cdef uint32_t purge_c(self, int32_t backend) noexcept nogil
    @cython.final
    cdef uint32_t expire_c(self, uint32_t now) noexcept nogil


cdef class ConnTable(_FlatTable):
    pass


cdef class AffinityTable(_FlatTable):
    pass


cdef int pack_proto(object proto, uint8_t* out) except -1
cdef int pack_addr(object addr, uint8_t* out, str field) except -1
cdef int pack_port(object port, uint16_t* out, str field) except -1
