# cython: language_level=3, embedsignature=True
"""Compiled connection tracking: 5-tuple -> backend (``ConnTable``) and client IP -> backend
(``AffinityTable``), with idle timeouts, LRU eviction at capacity and per-backend purge.

Layout (both tables):

- a slab of ``capacity`` entries of 56 bytes (``ct_entry`` in ``_conntrack_c.pxd``): the packed
  key (both addresses as 16 bytes, IPv4 as ``::ffff:a.b.c.d``, ports, protocol), the backend id,
  the time of last use in milliseconds, and four 24-bit links;
- an open-addressing index of ``1.5 * capacity`` 32-bit slots (load at most 2/3), each holding an
  entry number and an 8-bit tag from the key's hash (``ct_hash``), so a probe rarely touches the
  slab; linear probing, and deletion by backward shift (Knuth's algorithm R), so there are no
  tombstones and no rehash;
- one doubly linked list per timeout class (TCP/SCTP established, closing, UDP and others) in
  order of last use: since every entry of a class has the same timeout, each list is also in
  order of expiry, so ``expire`` only visits what it removes, and the least recently used entry
  of the table is the oldest of the list heads;
- one doubly linked list per backend id, so ``purge_backend`` costs the entries it removes.

Times are kept to the millisecond: an entry used at ``t`` is alive while ``now - t`` is below its
timeout, both rounded down to whole milliseconds since the first time the table was given.
"""

cimport cython
from cpython.long cimport PyLong_AsLongAndOverflow, PyLong_CheckExact
from cpython.unicode cimport PyUnicode_AsUTF8AndSize
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.math cimport isfinite
from libc.stdlib cimport free, malloc, realloc
from posix.stdlib cimport posix_memalign
from libc.string cimport memchr, memcmp, memcpy, memset

import ipaddress
import os

import numpy as np

from lbcore.errors import Cause, ConfigError, ValidationError

cdef extern from "<sys/mman.h>" nogil:
    int madvise(void* addr, size_t length, int advice)
    int MADV_HUGEPAGE

cdef enum:
    HUGE_PAGE = 2097152

cdef extern from "<arpa/inet.h>" nogil:
    int inet_pton(int af, const char* src, void* dst)
    int AF_INET
    int AF_INET6

# timeout classes
cdef enum:
    CLS_ESTABLISHED = 0     # TCP and SCTP, open
    CLS_CLOSING = 1         # TCP and SCTP after close()
    CLS_DATAGRAM = 2        # UDP and every other protocol

# links inside an entry
cdef enum:
    L_PREV = 0
    L_NEXT = 1
    B_PREV = 2
    B_NEXT = 3

cdef double REBASE_MS = 3221225472.0      # 0xC0000000: rebase the clock past ~37 days
cdef double KEEP_MS = 2147483648.0        # 2**31 ms: the clock left after a rebase
MAX_TIMEOUT = 2147483.0                   # seconds: 2**31 ms, the longest timeout kept

PROTOCOLS = {"TCP": 6, "UDP": 17, "SCTP": 132, "tcp": 6, "udp": 17, "sctp": 132}
_PROTOCOL_NAMES = {6: "TCP", 17: "UDP", 132: "SCTP"}


cdef object _invalid(str field, object value, str why):
    return ValidationError("ConnTable", "key", [Cause(field, "FieldValueInvalid", f"{value!r}: {why}")])


cdef extern from *:
    """
    /* The value of an exact int that fits a C long; 0 when it does not, never an exception.
       From CPython 3.12 on a compact int (every port and backend id) is read inline with the
       documented PyUnstable_Long_* calls; otherwise the public PyLong_AsLongAndOverflow, which
       cannot fail on an exact int. (Reading 3.11's digits in place saved 1-4% of a call.) */
    static inline int ct_small_int(PyObject* o, long* v) {
        int overflow;
    #if PY_VERSION_HEX >= 0x030C0000
        if (PyUnstable_Long_IsCompact((PyLongObject*)o)) {
            *v = (long)PyUnstable_Long_CompactValue((PyLongObject*)o);
            return 1;
        }
    #endif
        *v = PyLong_AsLongAndOverflow(o, &overflow);
        return !overflow;
    }
    """
    bint ct_small_int(object o, long* v) noexcept

cdef extern from "Python.h":
    int PyUnicode_KIND(object o)
    int PyUnicode_1BYTE_KIND
    bint PyUnicode_CheckExact(object o)
    bint PyBytes_CheckExact(object o)
    Py_ssize_t PyBytes_GET_SIZE(object o)
    const char* PyBytes_AS_STRING(object o)
    Py_ssize_t PyUnicode_GET_LENGTH(object o)
    const void* PyUnicode_DATA(object o)

# The spellings callers pass most, compared by identity before anything else (string literals
# and these constants are the same interned objects).
cdef object _TCP = "TCP"
cdef object _UDP = "UDP"


cdef int pack_proto(object proto, uint8_t* out) except -1:
    """Protocol as "TCP" / "UDP" / "SCTP" (any case of those) or an IANA number 0..255."""
    cdef const char* s
    cdef Py_ssize_t n
    cdef long p = -1
    cdef int overflow = 0
    if proto is _TCP:
        out[0] = 6
        return 0
    if proto is _UDP:
        out[0] = 17
        return 0
    if PyLong_CheckExact(proto):
        p = PyLong_AsLongAndOverflow(proto, &overflow)
        if not overflow and 0 <= p <= 255:
            out[0] = <uint8_t>p
            return 0
        raise _invalid("proto", proto, "must be a protocol number 0..255")
    if isinstance(proto, str):
        s = PyUnicode_AsUTF8AndSize(proto, &n)
        if n == 3 and memcmp(s, b"TCP", 3) == 0:
            p = 6
        elif n == 3 and memcmp(s, b"UDP", 3) == 0:
            p = 17
        else:
            p = PROTOCOLS.get((<str>proto).upper(), -1)
        if p < 0:
            raise _invalid("proto", proto, 'must be "TCP", "UDP", "SCTP" or a number 0..255')
    elif isinstance(proto, int) and not isinstance(proto, bool) and 0 <= proto <= 255:
        p = proto
    else:
        raise _invalid("proto", proto, 'must be "TCP", "UDP", "SCTP" or a number 0..255')
    out[0] = <uint8_t>p
    return 0


cdef int pack_port(object port, uint16_t* out, str field) except -1:
    cdef long p
    cdef int overflow = 0
    if PyLong_CheckExact(port) and ct_small_int(port, &p) and 0 <= p <= 65535:
        out[0] = <uint16_t>p
        return 0
    if PyLong_CheckExact(port):
        p = PyLong_AsLongAndOverflow(port, &overflow)
        if not overflow and 0 <= p <= 65535:
            out[0] = <uint16_t>p
            return 0
    elif isinstance(port, int) and not isinstance(port, bool) and 0 <= port <= 65535:
        out[0] = <uint16_t>port
        return 0
    raise _invalid(field, port, "must be a port number 0..65535")


cdef inline void _map4(uint8_t* out) noexcept nogil:
    memset(out, 0, 10)
    out[10] = 0xFF
    out[11] = 0xFF


cdef inline int parse_ipv4(const char* s, Py_ssize_t n, uint32_t* ip) noexcept nogil:
    """Dotted-quad text into its 4 octets, the first in the low byte of ``ip`` (kept in a register,
    so the key's word is written whole, see ``ct_set_v4``); 1 when ``s[:n]`` is one, else 0.

    The rules of ``inet_pton(AF_INET)``: exactly four decimal octets 0..255 separated by dots,
    no leading zero (so no octal reading), nothing else, not even a trailing NUL. The text is
    first copied into a zero-padded local buffer with two fixed-size copies, so every digit read
    is in bounds without a test; each octet's one to three digits are then read at once and its
    value chosen by arithmetic, not by a branch on the number of digits: in random addresses
    that number is random, and the compiler turned the conditional form into mispredicted
    branches."""
    cdef uint64_t w[3]
    cdef const uint8_t* b = <const uint8_t*>w
    cdef Py_ssize_t i = 0
    cdef int part
    cdef uint32_t d0, d1, d2, has1, has2, v1, v2, v, octets = 0
    if n < 7 or n > 15:
        return 0
    w[0] = w[1] = w[2] = 0
    memcpy(w, s, 4)  # 7 <= n <= 15: the first 4 and the last 4, 8 and 8 bytes cover the text
    memcpy((<char*>w) + n - 4, s + n - 4, 4)
    if n > 8:
        memcpy(w, s, 8)
        memcpy((<char*>w) + n - 8, s + n - 8, 8)
    for part in range(4):
        if part:
            if b[i] != 46:  # '.'; the padding is 0, so this also stops at the end
                return 0
            i += 1
        d0 = b[i] - 48u
        d1 = b[i + 1] - 48u
        d2 = b[i + 2] - 48u
        has1 = d1 <= 9
        has2 = has1 & (d2 <= 9)
        v1 = d0
        v2 = v1 * 10 + d1
        v = v1 + has1 * (v2 - v1) + has2 * (v2 * 10 + d2 - v2)  # unsigned: exact when chosen
        if d0 > 9 or v > 255 or (d0 == 0 and has1):
            return 0
        octets |= v << (8 * part)
        i += 1 + has1 + has2
    ip[0] = octets
    return i == n


cdef int _parse_text(const char* s, Py_ssize_t n, uint8_t* out) noexcept nogil:
    """An address in text into 16 bytes (IPv4 mapped); 1 on success."""
    cdef char buf[48]
    cdef uint32_t ip
    if parse_ipv4(s, n, &ip):
        ct_set_v4(out, ip)
        return 1
    # IPv6: inet_pton on a NUL-terminated copy, so an embedded NUL cannot cut the text short
    if n < 2 or n > 45 or memchr(s, 58, <size_t>n) == NULL:  # 58 is ':'
        return 0
    memcpy(buf, s, <size_t>n)
    buf[n] = 0
    if memchr(buf, 0, <size_t>n) != NULL:
        return 0
    return inet_pton(AF_INET6, buf, out) == 1


cdef inline int _port(object port, uint16_t* out, str field) except -1:
    """``pack_port`` with its common case inline."""
    cdef long p
    if PyLong_CheckExact(port) and ct_small_int(port, &p) and 0 <= p <= 65535:
        out[0] = <uint16_t>p
        return 0
    return pack_port(port, out, field)


cdef int pack_addr(object addr, uint8_t* out, str field) except -1:
    """Address as a str (IPv4 dotted quad or IPv6) or packed bytes (4 or 16) into 16 bytes."""
    cdef const char* s
    cdef Py_ssize_t n
    if PyUnicode_CheckExact(addr) and PyUnicode_KIND(addr) == PyUnicode_1BYTE_KIND:
        # the str's own one-byte buffer: no encoding, no copy (a non-ASCII byte is no address
        # character, so such text fails to parse as it should)
        if _parse_text(<const char*>PyUnicode_DATA(addr), PyUnicode_GET_LENGTH(addr), out):
            return 0
        raise _invalid(field, addr, "not an IPv4 or IPv6 address")
    if PyBytes_CheckExact(addr):
        n = PyBytes_GET_SIZE(addr)
        s = PyBytes_AS_STRING(addr)
        if n == 4:
            _map4(out)
            memcpy(out + 12, s, 4)
            return 0
        if n == 16:
            memcpy(out, s, 16)
            return 0
        raise _invalid(field, addr, "packed address must be 4 or 16 bytes")
    if isinstance(addr, str):
        if (<str>addr).isascii() and not PyUnicode_CheckExact(addr):
            return pack_addr(str.__str__(addr), out, field)  # a subclass: its plain str value
        raise _invalid(field, addr, "not an IPv4 or IPv6 address")
    if isinstance(addr, bytes):
        return pack_addr(bytes(addr), out, field)
    if isinstance(addr, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return pack_addr(addr.packed, out, field)
    raise _invalid(field, addr, "must be an address string or packed bytes")


cdef void* _big_alloc(size_t n) noexcept nogil:
    """Memory for the slab or the index. From 1 MiB up it is rounded up to whole 2 MiB pages,
    aligned to them and offered to the kernel for transparent huge pages: a probe lands anywhere in these arrays, and with 4 KiB
    pages nearly every probe of a large table would also miss the TLB."""
    cdef void* p = NULL
    if n < HUGE_PAGE // 2:
        return malloc(n)
    n = (n + HUGE_PAGE - 1) // HUGE_PAGE * HUGE_PAGE
    if posix_memalign(&p, HUGE_PAGE, n) != 0:
        return NULL
    madvise(p, n, MADV_HUGEPAGE)  # advice only: without THP it is plain memory
    return p


cdef inline uint32_t _home(uint64_t h, uint32_t n) noexcept nogil:
    # multiply-shift range reduction: any table size, no power of two needed
    return <uint32_t>(((h >> 32) * <uint64_t>n) >> 32)


cdef inline uint32_t _tag(uint64_t h) noexcept nogil:
    return <uint32_t>(h & 0xFF) << 24


cdef inline uint64_t _load64(const uint8_t* p) noexcept nogil:
    cdef uint64_t v
    memcpy(&v, p, 8)  # one unaligned load once compiled
    return v


cdef inline uint32_t _load32(const uint8_t* p) noexcept nogil:
    cdef uint32_t v
    memcpy(&v, p, 4)
    return v


cdef inline bint _same(const ct_entry* x, const ct_key* k) noexcept nogil:
    # entry and key share their first 36 bytes (addresses, then ports): five word compares
    # folded into one branch instead of a memcmp call and three more branches
    cdef const uint8_t* a = <const uint8_t*>x
    cdef const uint8_t* b = <const uint8_t*>k
    cdef uint64_t d = ((_load64(a) ^ _load64(b)) | (_load64(a + 8) ^ _load64(b + 8))
                       | (_load64(a + 16) ^ _load64(b + 16)) | (_load64(a + 24) ^ _load64(b + 24))
                       | <uint64_t>(_load32(a + 32) ^ _load32(b + 32))
                       | <uint64_t>((x.meta >> 24) ^ k.proto))
    return d == 0


cdef inline uint32_t _age(uint32_t now, uint32_t stamp) noexcept nogil:
    return now - stamp if now > stamp else 0


# The hot paths as inline functions, so the compiler can fold them into the loops that call
# them (the methods of the same names delegate to them).

cdef inline uint32_t _find_i(_FlatTable t, const ct_key* k, uint64_t h, uint32_t* slot) noexcept nogil:
    cdef uint32_t s = _home(h, t.nslots)
    cdef uint32_t tag = _tag(h)
    cdef uint32_t v
    while True:
        v = t.idx[s]
        if v == CT_EMPTY:
            slot[0] = s
            return CT_NIL
        if (v & 0xFF000000u) == tag and _same(&t.e[v & 0xFFFFFFu], k):
            slot[0] = s
            return v & 0xFFFFFFu
        s += 1
        if s == t.nslots:
            s = 0


cdef inline void _cls_unlink_i(_FlatTable t, uint32_t i, int c) noexcept nogil:
    cdef uint32_t p = ct_link(&t.e[i], L_PREV)
    cdef uint32_t q = ct_link(&t.e[i], L_NEXT)
    if p != CT_NIL:
        ct_set_link(&t.e[p], L_NEXT, q)
    else:
        t.head[c] = q
    if q != CT_NIL:
        ct_set_link(&t.e[q], L_PREV, p)
    else:
        t.tail[c] = p


cdef inline void _cls_append_i(_FlatTable t, uint32_t i, int c) noexcept nogil:
    cdef uint32_t last = t.tail[c]
    ct_set_links(&t.e[i], L_PREV, last, CT_NIL)
    if last != CT_NIL:
        ct_set_link(&t.e[last], L_NEXT, i)
    else:
        t.head[c] = i
    t.tail[c] = i


cdef inline void _b_unlink_i(_FlatTable t, uint32_t i, uint32_t b) noexcept nogil:
    cdef uint32_t p = ct_link(&t.e[i], B_PREV)
    cdef uint32_t q = ct_link(&t.e[i], B_NEXT)
    if p != CT_NIL:
        ct_set_link(&t.e[p], B_NEXT, q)
    else:
        t.bhead[b] = q
    if q != CT_NIL:
        ct_set_link(&t.e[q], B_PREV, p)
    t.bcount[b] -= 1


cdef inline void _b_push_i(_FlatTable t, uint32_t i, uint32_t b) noexcept nogil:
    cdef uint32_t q = t.bhead[b]
    ct_set_links(&t.e[i], B_PREV, CT_NIL, q)
    if q != CT_NIL:
        ct_set_link(&t.e[q], B_PREV, i)
    t.bhead[b] = i
    t.bcount[b] += 1


cdef class _FlatTable:
    """The shared core of ``ConnTable`` and ``AffinityTable`` (not used on its own)."""

    def __cinit__(self, capacity, *args, **kwargs):
        if not isinstance(capacity, int) or isinstance(capacity, bool) or not (
            1 <= capacity <= CT_MAX_CAPACITY
        ):
            raise ConfigError(f"capacity: must be an integer 1..{CT_MAX_CAPACITY}, got {capacity!r}")
        self.capacity = capacity
        self.seed = int.from_bytes(os.urandom(8), "little")
        self.nslots = self.capacity + self.capacity // 2 + 2
        self.e = <ct_entry*>_big_alloc(sizeof(ct_entry) * self.capacity)
        self.idx = <uint32_t*>_big_alloc(sizeof(uint32_t) * self.nslots)
        if self.e == NULL or self.idx == NULL:
            raise MemoryError(f"capacity: no memory for {capacity} entries")
        self.bhead = NULL
        self.bcount = NULL
        self.nb = 0
        self.norder = 0
        memset(self.cls_of_proto, 0, sizeof(self.cls_of_proto))
        self._reset()

    def __dealloc__(self):
        free(self.e)
        free(self.idx)
        free(self.bhead)
        free(self.bcount)

    cdef void _reset(self) noexcept:
        cdef uint32_t i
        memset(self.idx, 0xFF, sizeof(uint32_t) * self.nslots)
        for i in range(self.capacity):
            ct_set_link(&self.e[i], L_NEXT, i + 1 if i + 1 < self.capacity else CT_NIL)
        self.free_head = 0
        self.used = 0
        for i in range(3):
            self.head[i] = CT_NIL
            self.tail[i] = CT_NIL
        for i in range(self.nb):
            self.bhead[i] = CT_NIL
            self.bcount[i] = 0
        self.pending = False
        self.has_epoch = False
        self.epoch = 0.0

    # -- clock ------------------------------------------------------------------------------------

    @cython.final
    cdef uint32_t now_ms(self, double now) except? 0xFFFFFFFF:
        """Milliseconds since the table's epoch (the first time it was given); never negative."""
        cdef double d
        if not isfinite(now):
            raise _invalid("now", now, "must be a finite number of seconds")
        if not self.has_epoch:
            self.epoch = now
            self.has_epoch = True
        d = (now - self.epoch) * 1000.0
        if d >= REBASE_MS:
            self._rebase(d)
            d = (now - self.epoch) * 1000.0
        return <uint32_t>d if d > 0 else 0

    cdef void _rebase(self, double d) noexcept:
        # Move the epoch forward by whole seconds so the clock fits 32 bits again. An entry whose
        # stamp would go below zero has been idle for more than 2**31 ms, longer than any timeout.
        cdef int64_t shift = <int64_t>((d - KEEP_MS) / 1000.0) * 1000
        cdef int c
        cdef uint32_t i, nxt
        _settle(self)  # its stamp is of the old epoch
        for c in range(3):
            i = self.head[c]
            while i != CT_NIL:
                nxt = ct_link(&self.e[i], L_NEXT)
                if <int64_t>self.e[i].stamp < shift:
                    self._drop(i, self._slot_of(i))
                else:
                    self.e[i].stamp = <uint32_t>(self.e[i].stamp - shift)
                i = nxt
        self.epoch += <double>(shift // 1000)

    # -- index ------------------------------------------------------------------------------------

    @cython.final
    cdef uint32_t _find(self, const ct_key* k, uint64_t h, uint32_t* slot) noexcept nogil:
        _settle(self)
        return _find_i(self, k, h, slot)

    @cython.final
    cdef uint32_t _first_empty(self, uint64_t h) noexcept nogil:
        cdef uint32_t s = _home(h, self.nslots)
        while self.idx[s] != CT_EMPTY:
            s += 1
            if s == self.nslots:
                s = 0
        return s

    @cython.final
    cdef uint32_t _slot_of(self, uint32_t i) noexcept nogil:
        cdef uint32_t s = _home(ct_entry_hash(&self.e[i], self.seed), self.nslots)
        while (self.idx[s] & 0xFFFFFFu) != i:
            s += 1
            if s == self.nslots:
                s = 0
        return s

    @cython.final
    cdef void _delete_slot(self, uint32_t j) noexcept nogil:
        # Backward shift: pull later members of the probe run into the hole when their home slot
        # does not lie cyclically in (hole, their slot], so every key stays reachable from home.
        cdef uint32_t k = j
        cdef uint32_t v, h
        cdef bint stays
        while True:
            k += 1
            if k == self.nslots:
                k = 0
            v = self.idx[k]
            if v == CT_EMPTY:
                break
            h = _home(ct_entry_hash(&self.e[v & 0xFFFFFFu], self.seed), self.nslots)
            if j <= k:
                stays = j < h <= k
            else:
                stays = h > j or h <= k
            if not stays:
                self.idx[j] = v
                j = k
        self.idx[j] = CT_EMPTY

    # -- lists ------------------------------------------------------------------------------------

    @cython.final
    cdef int _class_of(self, const ct_entry* x) noexcept nogil:
        if x.meta & CT_CLOSING:
            return CLS_CLOSING
        return self.cls_of_proto[x.meta >> 24]

    @cython.final
    cdef void _cls_unlink(self, uint32_t i, int c) noexcept nogil:
        _cls_unlink_i(self, i, c)

    @cython.final
    cdef void _cls_append(self, uint32_t i, int c) noexcept nogil:
        _cls_append_i(self, i, c)

    @cython.final
    cdef void _b_unlink(self, uint32_t i, uint32_t b) noexcept nogil:
        _b_unlink_i(self, i, b)

    @cython.final
    cdef void _b_push(self, uint32_t i, uint32_t b) noexcept nogil:
        _b_push_i(self, i, b)

    @cython.final
    cdef int _ensure_backend(self, int32_t b) noexcept nogil:
        """Grow the per-backend arrays to hold id ``b``; -1 when out of memory."""
        cdef uint32_t n = self.nb * 2 if self.nb else 16
        cdef uint32_t i
        cdef uint32_t* nh
        cdef uint32_t* nc
        if <uint32_t>b < self.nb:
            return 0
        if n <= <uint32_t>b:
            n = <uint32_t>b + 1
        nh = <uint32_t*>realloc(self.bhead, sizeof(uint32_t) * n)
        if nh == NULL:
            return -1
        self.bhead = nh
        nc = <uint32_t*>realloc(self.bcount, sizeof(uint32_t) * n)
        if nc == NULL:
            return -1
        self.bcount = nc
        for i in range(self.nb, n):
            self.bhead[i] = CT_NIL
            self.bcount[i] = 0
        self.nb = n
        return 0

    # -- entries ----------------------------------------------------------------------------------

    @cython.final
    cdef void _drop(self, uint32_t i, uint32_t slot) noexcept nogil:
        cdef ct_entry* x = &self.e[i]
        self._delete_slot(slot)
        self._cls_unlink(i, self._class_of(x))
        self._b_unlink(i, x.meta & CT_MAX_BACKEND)
        ct_set_link(x, L_NEXT, self.free_head)
        self.free_head = i
        self.used -= 1

    @cython.final
    cdef void _evict_one(self, uint32_t now) noexcept nogil:
        # An expired head first (it is garbage anyway), else the least recently used entry:
        # the oldest list head, ties going to the class visited first.
        cdef uint32_t i, best = CT_NIL
        cdef int o, c
        for o in range(self.norder):
            c = self.order[o]
            i = self.head[c]
            if i != CT_NIL and _age(now, self.e[i].stamp) >= self.timeout_ms[c]:
                self._drop(i, self._slot_of(i))
                return
        for o in range(self.norder):
            i = self.head[self.order[o]]
            if i != CT_NIL and (best == CT_NIL or self.e[i].stamp < self.e[best].stamp):
                best = i
        self._drop(best, self._slot_of(best))

    @cython.final
    cdef int32_t lookup_c(self, const ct_key* k, uint32_t now) noexcept nogil:
        return self.lookup_h(k, ct_hash(k, self.seed), now)

    @cython.final
    cdef void prefetch_h(self, uint64_t h) noexcept nogil:
        """Start loading the index slot of a key hashing to ``h`` (a probe soon to come)."""
        ct_prefetch(&self.idx[_home(h, self.nslots)])

    @cython.final
    cdef int32_t lookup_h(self, const ct_key* k, uint64_t h, uint32_t now) noexcept nogil:
        _settle(self)
        return _lookup_i(self, k, h, now)

    @cython.final
    cdef int insert_c(self, const ct_key* k, int32_t backend, uint32_t now) noexcept nogil:
        """Map ``k`` to ``backend`` (0..CT_MAX_BACKEND) as used at ``now``; -1 when out of memory."""
        return self.insert_h(k, ct_hash(k, self.seed), backend, now)

    @cython.final
    cdef int insert_h(self, const ct_key* k, uint64_t h, int32_t backend, uint32_t now) noexcept nogil:
        if self._ensure_backend(backend) < 0:
            return -1
        _settle(self)
        _insert_i(self, k, h, backend, now)
        return 0

    @cython.final
    cdef bint remove_c(self, const ct_key* k) noexcept nogil:
        cdef uint32_t slot
        cdef uint32_t i = self._find(k, ct_hash(k, self.seed), &slot)
        if i == CT_NIL:
            return False
        self._drop(i, slot)
        return True

    @cython.final
    cdef bint close_c(self, const ct_key* k, uint32_t now) noexcept nogil:
        cdef uint32_t slot
        cdef uint32_t i = self._find(k, ct_hash(k, self.seed), &slot)
        cdef ct_entry* x
        cdef int c
        cdef bint alive
        if i == CT_NIL:
            return False
        x = &self.e[i]
        c = self._class_of(x)
        alive = _age(now, x.stamp) < self.timeout_ms[c]
        if alive and c == CLS_CLOSING:
            return False  # closed before: the first close started its timer
        if not alive or c == CLS_DATAGRAM:
            # expired already, or a datagram flow: nothing to linger for
            self._drop(i, slot)
            return alive
        self._cls_unlink(i, c)
        x.meta |= CT_CLOSING
        x.stamp = now
        self._cls_append(i, CLS_CLOSING)
        return True

    @cython.final
    cdef uint32_t purge_c(self, int32_t backend) noexcept nogil:
        cdef uint32_t n = 0
        cdef uint32_t i
        _settle(self)
        if backend < 0 or <uint32_t>backend >= self.nb:
            return 0
        while self.bhead[backend] != CT_NIL:
            i = self.bhead[backend]
            self._drop(i, self._slot_of(i))
            n += 1
        return n

    @cython.final
    cdef uint32_t expire_c(self, uint32_t now) noexcept nogil:
        cdef uint32_t n = 0
        cdef uint32_t i
        cdef int o, c
        _settle(self)
        for o in range(self.norder):
            c = self.order[o]
            while True:
                i = self.head[c]
                if i == CT_NIL or _age(now, self.e[i].stamp) < self.timeout_ms[c]:
                    break
                self._drop(i, self._slot_of(i))
                n += 1
        return n

    # -- Python interface shared by both tables ----------------------------------------------------

    def __len__(self) -> int:
        _settle(self)
        return self.used

    def purge_backend(self, backend: int) -> int:
        """Remove every entry that points at ``backend``; return how many went."""
        return self.purge_c(backend)

    def expire(self, now: float) -> int:
        """Remove every entry idle for at least its timeout at ``now``; return how many went."""
        return self.expire_c(self.now_ms(now))

    def count(self, backend: int) -> int:
        """Entries that point at ``backend`` (expired ones count until they are removed)."""
        _settle(self)
        if backend < 0 or backend >= self.nb:
            return 0
        return self.bcount[backend]

    def clear(self) -> None:
        """Remove every entry and forget the epoch."""
        self._reset()

    def memory_bytes(self) -> int:
        """Bytes held in C: the entry slab, the index and the per-backend arrays."""
        return (sizeof(ct_entry) * self.capacity + sizeof(uint32_t) * self.nslots
                + 2 * sizeof(uint32_t) * self.nb)

    def _entries(self):
        """(packed key fields, backend, closing, stamp_ms) of every entry, each class oldest first."""
        out = []
        cdef int o, c
        cdef uint32_t i
        cdef ct_entry* x
        _settle(self)
        for o in range(self.norder):
            c = self.order[o]
            i = self.head[c]
            while i != CT_NIL:
                x = &self.e[i]
                out.append((x.meta >> 24, bytes(x.addr[:16]), x.sport, bytes(x.addr[16:32]),
                            x.dport, x.meta & CT_MAX_BACKEND, bool(x.meta & CT_CLOSING), x.stamp))
                i = ct_link(x, L_NEXT)
        return out

    def _check(self) -> None:
        """Verify every invariant (index, lists, counts); raise AssertionError on the first break."""
        cdef uint32_t s, v, i, h, n = 0, total = 0
        _settle(self)
        for s in range(self.nslots):
            v = self.idx[s]
            if v != CT_EMPTY:
                n += 1
                assert (v & 0xFFFFFFu) < self.capacity
                i = v & 0xFFFFFFu
                assert _tag(ct_entry_hash(&self.e[i], self.seed)) == (v & 0xFF000000u), "tag"
                h = _home(ct_entry_hash(&self.e[i], self.seed), self.nslots)
                while h != s:  # linear probing: no hole between home and slot
                    assert self.idx[h] != CT_EMPTY, "entry unreachable from its home slot"
                    h = h + 1 if h + 1 < self.nslots else 0
        assert n == self.used, f"index holds {n}, count says {self.used}"
        for b in range(self.nb):
            i = self.bhead[b]
            m = 0
            while i != CT_NIL:
                assert (self.e[i].meta & CT_MAX_BACKEND) == <uint32_t>b
                i = ct_link(&self.e[i], B_NEXT)
                m += 1
            assert m == self.bcount[b], f"backend {b} list {m} != count {self.bcount[b]}"
            total += m
        assert total == self.used
        assert len(self._entries()) == self.used


cdef inline uint32_t _now_ms(_FlatTable t, double now) except? 0xFFFFFFFF:
    """``now_ms`` with its common case inline: a clock past its epoch and short of a rebase
    (NaN and infinities fail both comparisons and get their error from ``now_ms``)."""
    cdef double d = (now - t.epoch) * 1000.0
    if t.has_epoch and 0.0 < d < REBASE_MS:
        return <uint32_t>d
    return t.now_ms(now)


cdef inline uint32_t _find_seen(_FlatTable t, const ct_key* k, uint64_t h, uint32_t s, uint32_t v,
                               uint32_t* slot) noexcept nogil:
    """``_find_i`` for a batch row whose home slot ``s`` held ``v`` when its entry was fetched.
    When the slot still holds it and it is the key's entry, the entry is read at the address that
    earlier load gave, so the row's chain of dependent loads is one index load shorter: a batch
    row's time here follows that chain more than its count of instructions."""
    if v != CT_EMPTY and (v & 0xFF000000u) == _tag(h) and _same(&t.e[v & 0xFFFFFFu], k) and t.idx[s] == v:
        slot[0] = s
        return v & 0xFFFFFFu
    return _find_i(t, k, h, slot)


cdef inline int32_t _lookup_i(_FlatTable t, const ct_key* k, uint64_t h, uint32_t now) noexcept nogil:
    cdef uint32_t slot
    cdef uint32_t i = _find_i(t, k, h, &slot)
    return _lookup_at(t, k, i, slot, now)


cdef inline int32_t _lookup_at(_FlatTable t, const ct_key* k, uint32_t i, uint32_t slot,
                               uint32_t now) noexcept nogil:
    """``_lookup_i`` once the probe has found key ``k``'s entry ``i`` in ``slot`` (``CT_NIL``:
    none)."""
    cdef ct_entry* x
    cdef int c
    if i == CT_NIL:
        return -1
    x = &t.e[i]
    # its class as _class_of gives it, with the protocol taken from the key (the entry's own)
    # so that only the closing flag waits for the entry to be read
    c = CLS_CLOSING if x.meta & CT_CLOSING else t.cls_of_proto[k.proto]
    if _age(now, x.stamp) >= t.timeout_ms[c]:
        t._drop(i, slot)
        return -1
    x.stamp = now
    if t.tail[c] != i:
        _cls_unlink_i(t, i, c)
        _cls_append_i(t, i, c)
    return <int32_t>(x.meta & CT_MAX_BACKEND)


cdef inline void _insert_i(_FlatTable t, const ct_key* k, uint64_t h, int32_t backend,
                           uint32_t now) noexcept nogil:
    """``insert_h`` once the per-backend arrays are known to hold ``backend``."""
    cdef uint32_t slot
    cdef uint32_t i = _find_i(t, k, h, &slot)
    _insert_at(t, k, h, i, slot, backend, now)


cdef inline void _insert_at(_FlatTable t, const ct_key* k, uint64_t h, uint32_t i, uint32_t slot,
                            int32_t backend, uint32_t now) noexcept nogil:
    """``_insert_i`` once the probe has found entry ``i`` in ``slot`` (``CT_NIL``: none, and
    ``slot`` is where the key goes)."""
    cdef uint32_t meta = (<uint32_t>k.proto << 24) | <uint32_t>backend
    cdef int c
    if i != CT_NIL and t.e[i].meta == meta:
        # same backend and protocol, not closing: only its use is new (the common case, kept
        # small so that it is compiled into the batch loop)
        c = t.cls_of_proto[k.proto]  # from the key, known before the entry is read
        t.e[i].stamp = now
        if t.tail[c] != i:
            _cls_unlink_i(t, i, c)
            _cls_append_i(t, i, c)
        return
    _insert_changed(t, k, h, i, slot, backend, now)


cdef void _insert_changed(_FlatTable t, const ct_key* k, uint64_t h, uint32_t i, uint32_t slot,
                          int32_t backend, uint32_t now) noexcept nogil:
    """``_insert_at`` for a new key, or a known one changing backend, protocol or closing state."""
    cdef uint32_t old, meta = (<uint32_t>k.proto << 24) | <uint32_t>backend
    cdef ct_entry* x
    cdef int c
    if i != CT_NIL:
        # a known key (alive, or expired and not yet removed) starts afresh
        x = &t.e[i]
        c = t._class_of(x)
        old = x.meta & CT_MAX_BACKEND
        if old != <uint32_t>backend:
            _b_unlink_i(t, i, old)
            _b_push_i(t, i, backend)
        x.stamp = now
        _cls_unlink_i(t, i, c)
        x.meta = meta
        _cls_append_i(t, i, t.cls_of_proto[k.proto])
        return
    if t.used == t.capacity:
        t._evict_one(now)
        slot = t._first_empty(h)
    i = t.free_head
    x = &t.e[i]
    t.free_head = ct_link(x, L_NEXT)
    memcpy(x.addr, k.addr, 32)
    x.sport = k.sport
    x.dport = k.dport
    x.meta = meta
    x.stamp = now
    t.idx[slot] = _tag(h) | i
    _cls_append_i(t, i, t.cls_of_proto[k.proto])
    _b_push_i(t, i, backend)
    t.used += 1


cdef inline void _settle(_FlatTable t) noexcept nogil:
    """Apply the insert ``ConnTable.insert`` left pending, if any: every entry point that
    reads or changes the table calls this first, so none can tell the insert was late."""
    if t.pending:
        t.pending = False
        _insert_i(t, &t.pend_key, t.pend_hash, t.pend_backend, t.pend_now)


# The destination parsed last, by identity: a proxy passes its service's address, the same
# object, with every connection, so most calls skip parsing it. Holding the reference keeps the
# object alive, so its identity cannot pass to another one; str and bytes never change.
cdef object _last_dst = None
cdef uint8_t _last_dst_key[16]


cdef extern from *:
    """
    /* A key is written as whole 8-byte words where it can be, so the hash's loads of those words
       are each served by one store (a load spanning several narrow stores waits for them to
       reach the cache), and a batch hashes the words it has just built without loading them. */
    #if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    static inline uint64_t ct_v4_word(uint32_t ip) {  /* bytes 8-15 of ::ffff:a.b.c.d, a in ip's low byte */
        return 0xFFFF0000ull | ((uint64_t)ip << 32);
    }
    static inline uint64_t ct_tail_word(uint16_t sport, uint16_t dport, uint8_t proto) {
        return sport | ((uint64_t)dport << 16) | ((uint64_t)proto << 32);  /* and the zero pad */
    }
    #else
    static inline uint64_t ct_v4_word(uint32_t ip) {
        return (0xFFFFull << 32) | __builtin_bswap32(ip);
    }
    static inline uint64_t ct_tail_word(uint16_t sport, uint16_t dport, uint8_t proto) {
        return ((uint64_t)sport << 48) | ((uint64_t)dport << 32) | ((uint64_t)proto << 24);
    }
    #endif
    static inline void ct_set_v4(uint8_t* a, uint32_t ip) {
        uint64_t w0 = 0, w1 = ct_v4_word(ip);
        memcpy(a, &w0, 8);
        memcpy(a + 8, &w1, 8);
    }
    static inline void ct_set_tail(ct_key* k, uint16_t sport, uint16_t dport, uint8_t proto) {
        uint64_t w = ct_tail_word(sport, dport, proto);
        memcpy(&k->sport, &w, 8);  /* ports, protocol and the zero pad */
    }
    """
    void ct_set_v4(uint8_t* a, uint32_t ip) noexcept nogil
    void ct_set_tail(ct_key* k, uint16_t sport, uint16_t dport, uint8_t proto) noexcept nogil
    uint64_t ct_v4_word(uint32_t ip) noexcept nogil
    uint64_t ct_tail_word(uint16_t sport, uint16_t dport, uint8_t proto) noexcept nogil
    uint32_t bswap32 "__builtin_bswap32"(uint32_t v) noexcept nogil


cdef inline int _key(ct_key* k, object proto, object src, object sport, object dst,
                     object dport) except -1:
    """Every byte of ``k`` from the five fields, errors naming the first bad one."""
    global _last_dst
    cdef uint8_t p = 6
    cdef uint16_t sp, dp
    cdef uint32_t ip
    if proto is not _TCP:
        pack_proto(proto, &p)
    if (PyUnicode_CheckExact(src) and PyUnicode_KIND(src) == PyUnicode_1BYTE_KIND
            and parse_ipv4(<const char*>PyUnicode_DATA(src), PyUnicode_GET_LENGTH(src), &ip)):
        ct_set_v4(k.addr, ip)  # the common case inline
    else:
        pack_addr(src, k.addr, "src")
    if dst is _last_dst:
        memcpy(k.addr + 16, _last_dst_key, 16)
    else:
        pack_addr(dst, k.addr + 16, "dst")
        memcpy(_last_dst_key, k.addr + 16, 16)
        _last_dst = dst
    _port(sport, &sp, "sport")
    _port(dport, &dp, "dport")
    ct_set_tail(k, sp, dp, p)
    return 0


cdef inline int32_t _backend_id(object backend) except -1:
    cdef long b
    cdef int overflow = 0
    if PyLong_CheckExact(backend) and ct_small_int(backend, &b) and 0 <= b <= CT_MAX_BACKEND:
        return <int32_t>b
    if isinstance(backend, int):
        b = PyLong_AsLongAndOverflow(backend, &overflow)
        if not overflow and 0 <= b <= CT_MAX_BACKEND:
            return <int32_t>b
    raise _invalid("backend", backend, f"must be a backend id 0..{CT_MAX_BACKEND}")


cdef double _timeout(str name, object value) except -1:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
        0 < value <= MAX_TIMEOUT
    ):
        raise ConfigError(f"{name}: must be seconds in (0, {MAX_TIMEOUT:g}], got {value!r}")
    return value


# The batch pipeline. At step i, row i's key is built as five words, written into a ring of keys
# and hashed from the words themselves, and its index slot fetched; the entry named by the slot of
# row i - LAG_ENTRY is fetched; row i - LAG_ANSWER is answered. Memory latency of many rows
# overlaps that way.
cdef enum:
    RING = 64            # keys in flight (a power of two, more than LAG_ANSWER)
    LAG_ENTRY = 16
    LAG_ANSWER = 32


def _addr_str(b: bytes) -> str:
    """A stored 16-byte address as text (IPv4 for ``::ffff:a.b.c.d``)."""
    a = ipaddress.IPv6Address(b)
    return str(a.ipv4_mapped) if a.ipv4_mapped is not None else str(a)


cdef inline void _addr_words(const uint8_t* base, int kind, Py_ssize_t i, uint64_t* hi, uint64_t* lo) noexcept nogil:
    """The two words of row i's address in a column (as the key stores them)."""
    cdef const uint8_t* b
    if kind == 16:
        hi[0] = _load64(base + 16 * i)
        lo[0] = _load64(base + 16 * i + 8)
    elif kind == 4:
        b = base + 4 * i
        hi[0] = 0
        lo[0] = ct_v4_word(b[0] | (<uint32_t>b[1] << 8) | (<uint32_t>b[2] << 16) | (<uint32_t>b[3] << 24))
    else:  # uint32 IPv4 as an integer, host order: its first octet is its high byte
        hi[0] = 0
        lo[0] = ct_v4_word(bswap32((<const uint32_t*>base)[i]))


cdef class _Batch:
    """The columns of a batch, read in place: no (n, 16) copies, scalars stay scalars."""

    cdef const uint8_t* src
    cdef const uint8_t* dst
    cdef int skind, dkind
    cdef const uint16_t* sport
    cdef const uint16_t* dport
    cdef const uint8_t* proto
    cdef const int32_t* backend
    cdef uint16_t sport1, dport1
    cdef uint8_t proto1
    cdef int32_t backend1
    cdef int32_t backend_max            # the largest backend id of the batch
    cdef list keep                      # the arrays the pointers point into

    cdef object address_column(self, addrs, str field, Py_ssize_t n):
        cdef const uint8_t[::1] flat
        a = np.asarray(addrs)
        if a.ndim == 1 and a.dtype == np.uint32:
            kind = 0
        elif a.ndim == 2 and a.dtype == np.uint8 and a.shape[1] in (4, 16):
            kind = a.shape[1]
        else:
            raise _invalid(field, f"array{a.shape} of {a.dtype}",
                           "must be uint8 (n, 4) or (n, 16), or uint32 (n,) IPv4")
        if a.shape[0] != n:
            raise _invalid(field, f"{a.shape[0]} rows", f"every column needs {n} rows")
        a = np.ascontiguousarray(a)
        if self.keep is None:
            self.keep = []
        self.keep.append(a)
        self.skind = kind
        self.src = NULL
        if n:
            flat = a.reshape(-1).view(np.uint8)
            self.src = &flat[0]
        return a

    cdef int columns(self, proto, src, sport, dst, dport, backend, Py_ssize_t n) except -1:
        self.keep = []
        self.address_column(dst, "dst", n)
        self.dst, self.dkind = self.src, self.skind
        self.address_column(src, "src", n)
        self.sport = <const uint16_t*>self._ints(sport, "sport", n, np.uint16, 0, 65535)
        self.dport = <const uint16_t*>self._ints(dport, "dport", n, np.uint16, 0, 65535)
        if isinstance(proto, (str, int)):
            pack_proto(proto, &self.proto1)
            self.proto = NULL
        else:
            self.proto = <const uint8_t*>self._ints(proto, "proto", n, np.uint8, 0, 255)
        if backend is not None:
            self.backend = <const int32_t*>self._ints(backend, "backend", n, np.int32, 0,
                                                      CT_MAX_BACKEND)
        return 0

    cdef const void* _ints(self, values, str field, Py_ssize_t n, dtype, long lo, long hi) except? NULL:
        """A column of integers, or NULL with the scalar kept for every row."""
        cdef const uint8_t[::1] flat
        cdef long v
        a = np.asarray(values)
        if a.ndim == 0:
            if a.dtype.kind not in "iu" or not lo <= int(a) <= hi:
                raise _invalid(field, values, f"must be an integer {lo}..{hi}")
            v = int(a)
            if field == "sport":
                self.sport1 = <uint16_t>v
            elif field == "dport":
                self.dport1 = <uint16_t>v
            elif field == "proto":
                self.proto1 = <uint8_t>v
            else:
                self.backend1 = self.backend_max = <int32_t>v
            return NULL
        if a.ndim != 1 or a.shape[0] != n:
            raise _invalid(field, f"array{a.shape}", f"must be a scalar or {n} values")
        if a.dtype != dtype or (dtype == np.int32 and n and (a.min() < lo or a.max() > hi)):
            if a.dtype.kind not in "iu" or (n and (a.min() < lo or a.max() > hi)):
                raise _invalid(field, f"array of {a.dtype}", f"must be integers {lo}..{hi}")
            a = a.astype(dtype)
        a = np.ascontiguousarray(a)
        self.keep.append(a)
        if n == 0:
            return NULL
        if field == "backend":
            self.backend_max = a.max()  # one vectorized pass, not a loop in the insert
        flat = a.view(np.uint8)
        return &flat[0]

    cdef inline uint64_t row(self, Py_ssize_t i, ct_key* k, const ct_keys* keys) noexcept nogil:
        """Write row i's key into ``k`` as five whole words; return its hash, made from the
        words as built rather than loaded back (a load would wait for the stores)."""
        cdef uint64_t w[5]
        _addr_words(self.src, self.skind, i, &w[0], &w[1])
        _addr_words(self.dst, self.dkind, i, &w[2], &w[3])
        w[4] = ct_tail_word(self.sport[i] if self.sport != NULL else self.sport1,
                            self.dport[i] if self.dport != NULL else self.dport1,
                            self.proto[i] if self.proto != NULL else self.proto1)
        memcpy(k, w, sizeof(w))  # the whole key: sizeof(ct_key) is five words
        return ct_hash_keyed(w[0], w[1], w[2], w[3], w[4], keys)

    cdef inline int32_t backend_of(self, Py_ssize_t i) noexcept nogil:
        return self.backend[i] if self.backend != NULL else self.backend1


assert sizeof(ct_key) == 40


cdef struct _Pipe:
    # what every step of a batch reads, held in locals (the table's fields would be loaded again
    # after each store to an entry)
    ct_entry* e
    uint32_t* idx
    uint32_t nslots
    ct_keys keys
    ct_key ring[RING]
    uint64_t hr[RING]
    uint32_t seen_slot[RING]     # the home slot of a row, when its entry was fetched
    uint32_t seen[RING]          # what that slot held then (see _find_seen)


cdef inline void _pipe_start(_Pipe* p, _FlatTable table) noexcept nogil:
    p.e = table.e
    p.idx = table.idx
    p.nslots = table.nslots
    p.keys = ct_keys_of(table.seed)


cdef inline void _pipe_key(_Pipe* p, _Batch cols, Py_ssize_t i) noexcept nogil:
    """Step i's first stage: row i's key and hash, and the fetch of its index slot."""
    cdef uint64_t h = cols.row(i, &p.ring[i & (RING - 1)], &p.keys)
    p.hr[i & (RING - 1)] = h
    ct_prefetch(&p.idx[_home(h, p.nslots)])


cdef inline void _pipe_entry(_Pipe* p, Py_ssize_t j) noexcept nogil:
    """Fetch the entry row j's index slot names (an entry may straddle two cache lines)."""
    cdef uint32_t s = _home(p.hr[j & (RING - 1)], p.nslots)
    cdef uint32_t v = p.idx[s]
    p.seen_slot[j & (RING - 1)] = s
    p.seen[j & (RING - 1)] = v
    if v != CT_EMPTY:
        ct_prefetch(&p.e[v & 0xFFFFFFu])
        ct_prefetch((<const char*>&p.e[v & 0xFFFFFFu]) + sizeof(ct_entry) - 1)


cdef inline uint32_t _pipe_find(_Pipe* p, _FlatTable t, Py_ssize_t j, uint32_t* slot) noexcept nogil:
    """Row j's entry (``CT_NIL``: none) and its slot (or where it goes), for its answer."""
    return _find_seen(t, &p.ring[j & (RING - 1)], p.hr[j & (RING - 1)], p.seen_slot[j & (RING - 1)],
                      p.seen[j & (RING - 1)], slot)


cdef inline void _pipeline(_Pipe* p, _Batch cols, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    """The stages of step ``i`` of a batch before its answer, at the batch's start and end."""
    if 0 <= i - LAG_ENTRY < n:
        _pipe_entry(p, i - LAG_ENTRY)
    if i < n:
        _pipe_key(p, cols, i)


def _batch_rows(src) -> Py_ssize_t:
    """How many rows a batch of addresses ``src`` has (an array, not one address)."""
    a = np.asarray(src)
    if a.ndim == 0:
        raise _invalid("src", src, "a batch needs an array of addresses")
    return a.shape[0]


cdef class ConnTable(_FlatTable):
    """Connection tracking: (protocol, source, source port, destination, destination port) ->
    backend id, for IPv4 and IPv6.

    :param capacity: most entries held; a full table evicts the least recently used one.
    :param tcp_timeout: idle seconds of an open TCP or SCTP connection (kube-proxy sets the
        kernel's established timeout to 86400).
    :param tcp_closing_timeout: idle seconds of a TCP or SCTP connection after ``close`` (the
        kernel's TIME_WAIT, 120).
    :param udp_timeout: idle seconds of a UDP flow or any other protocol (the kernel's 30).
    """

    def __init__(self, capacity: int, tcp_timeout: float = 86400.0,
                 tcp_closing_timeout: float = 120.0, udp_timeout: float = 30.0):
        cdef int p
        self.timeout_ms[CLS_ESTABLISHED] = <uint32_t>(_timeout("tcp_timeout", tcp_timeout) * 1000)
        self.timeout_ms[CLS_CLOSING] = <uint32_t>(
            _timeout("tcp_closing_timeout", tcp_closing_timeout) * 1000)
        self.timeout_ms[CLS_DATAGRAM] = <uint32_t>(_timeout("udp_timeout", udp_timeout) * 1000)
        for p in range(256):
            self.cls_of_proto[p] = CLS_DATAGRAM
        self.cls_of_proto[6] = CLS_ESTABLISHED
        self.cls_of_proto[132] = CLS_ESTABLISHED
        self.order[0] = CLS_CLOSING
        self.order[1] = CLS_DATAGRAM
        self.order[2] = CLS_ESTABLISHED
        self.norder = 3

    @property
    def timeouts(self) -> dict:
        """The idle timeouts in seconds, by name."""
        return {"tcp_timeout": self.timeout_ms[CLS_ESTABLISHED] / 1000.0,
                "tcp_closing_timeout": self.timeout_ms[CLS_CLOSING] / 1000.0,
                "udp_timeout": self.timeout_ms[CLS_DATAGRAM] / 1000.0}

    @cython.binding(False)
    def lookup(self, proto, src, sport, dst, dport, double now) -> int:
        """The backend of this connection, or -1; a hit counts as use and refreshes its timer."""
        return _lookup(self, proto, src, sport, dst, dport, now)

    @cython.binding(False)
    def insert(self, proto, src, sport, dst, dport, backend, double now) -> None:
        """Track this connection as going to ``backend`` (replacing any entry of the same key)."""
        _insert(self, proto, src, sport, dst, dport, backend, now)

    @cython.binding(False)
    def close(self, proto, src, sport, dst, dport, double now) -> bool:
        """The connection ended: TCP/SCTP move to the closing timeout, UDP and others go.

        Returns whether an open entry was closed (False when absent, expired or closed already,
        so a caller counting live connections releases each one once)."""
        cdef ct_key k
        _key(&k, proto, src, sport, dst, dport)
        return self.close_c(&k, self.now_ms(now))

    @cython.binding(False)
    def remove(self, proto, src, sport, dst, dport) -> bool:
        """Forget this connection at once; return whether it was there."""
        cdef ct_key k
        _key(&k, proto, src, sport, dst, dport)
        return self.remove_c(&k)

    def __contains__(self, key) -> bool:
        cdef ct_key k
        cdef uint32_t slot
        proto, src, sport, dst, dport = key
        _key(&k, proto, src, sport, dst, dport)
        return self._find(&k, ct_hash(&k, self.seed), &slot) != CT_NIL

    def _slot(self, key) -> int:
        """The index slot holding ``key``, or -1 (for tests of the index's layout)."""
        cdef ct_key k
        cdef uint32_t slot
        proto, src, sport, dst, dport = key
        _key(&k, proto, src, sport, dst, dport)
        if self._find(&k, ct_hash(&k, self.seed), &slot) == CT_NIL:
            return -1
        return slot

    @cython.boundscheck(False)
    @cython.wraparound(False)
    def lookup_many(self, proto, src, sport, dst, dport, double now):
        """Look up a batch of connections; return an int32 array of backends (-1 for a miss).

        Columns: ``src``/``dst`` uint8 (n, 16) or (n, 4), or uint32 (n,) IPv4; ``sport``/``dport``
        integers; ``proto`` a name, a number or uint8 (n,).

        The loop keeps the GIL: every hit moves its entry in the LRU order, so the batch changes
        the table, and the GIL is what keeps another thread from changing it at the same time."""
        cdef Py_ssize_t n = _batch_rows(src)
        cdef _Batch cols = _Batch.__new__(_Batch)
        cols.columns(proto, src, sport, dst, dport, None, n)
        _settle(self)
        out = np.empty(n, dtype=np.int32)
        cdef int32_t[::1] O = out
        cdef uint32_t t = self.now_ms(now)
        cdef _Pipe p
        cdef Py_ssize_t i, j
        cdef uint32_t e, slot
        _pipe_start(&p, self)
        for i in range(min(n, LAG_ANSWER)):
            _pipeline(&p, cols, i, n)
        for i in range(LAG_ANSWER, n):  # the steady state: every stage has its row
            j = i - LAG_ANSWER
            e = _pipe_find(&p, self, j, &slot)
            O[j] = _lookup_at(self, &p.ring[j & (RING - 1)], e, slot, t)
            _pipe_entry(&p, i - LAG_ENTRY)
            _pipe_key(&p, cols, i)
        for i in range(n, n + LAG_ANSWER):
            j = i - LAG_ANSWER
            if j >= 0:
                e = _pipe_find(&p, self, j, &slot)
                O[j] = _lookup_at(self, &p.ring[j & (RING - 1)], e, slot, t)
            _pipeline(&p, cols, i, n)
        return out

    @cython.boundscheck(False)
    @cython.wraparound(False)
    def insert_many(self, proto, src, sport, dst, dport, backend, double now) -> None:
        """Insert a batch of connections (columns as in ``lookup_many``; ``backend`` int32 (n,)
        or one id for all), in row order."""
        cdef Py_ssize_t n = _batch_rows(src)
        cdef _Batch cols = _Batch.__new__(_Batch)
        cols.columns(proto, src, sport, dst, dport, backend, n)
        cdef uint32_t t = self.now_ms(now)
        cdef _Pipe p
        cdef Py_ssize_t i, j
        cdef uint32_t e, slot
        if n and self._ensure_backend(cols.backend_max) < 0:
            raise MemoryError("ConnTable: no memory for the per-backend lists")
        _settle(self)
        _pipe_start(&p, self)
        for i in range(min(n, LAG_ANSWER)):  # the pipeline of lookup_many
            _pipeline(&p, cols, i, n)
        for i in range(LAG_ANSWER, n):
            j = i - LAG_ANSWER
            e = _pipe_find(&p, self, j, &slot)
            _insert_at(self, &p.ring[j & (RING - 1)], p.hr[j & (RING - 1)], e, slot, cols.backend_of(j), t)
            _pipe_entry(&p, i - LAG_ENTRY)
            _pipe_key(&p, cols, i)
        for i in range(n, n + LAG_ANSWER):
            j = i - LAG_ANSWER
            if j >= 0:
                e = _pipe_find(&p, self, j, &slot)
                _insert_at(self, &p.ring[j & (RING - 1)], p.hr[j & (RING - 1)], e, slot, cols.backend_of(j), t)
            _pipeline(&p, cols, i, n)

    def entries(self) -> list:
        """Every entry as ``(proto, src, sport, dst, dport, backend, closing)``, each timeout class
        (closing, UDP and others, open TCP/SCTP) from least to most recently used."""
        return [(_PROTOCOL_NAMES.get(p, p), _addr_str(s), sp, _addr_str(d), dp, b, c)
                for p, s, sp, d, dp, b, c, _ in self._entries()]


cdef class AffinityTable(_FlatTable):
    """ClientIP session affinity: client address -> backend id, each entry alive for
    ``timeout`` seconds after its last use (a Service's ``sessionAffinityConfig.clientIP.
    timeoutSeconds``, 10800 by default), refreshed by every connection it sends to its backend.

    :param capacity: most clients held; a full table evicts the least recently used one.
    :param timeout: idle seconds before a client's affinity lapses.
    """

    def __init__(self, capacity: int, timeout: float = 10800.0):
        self.timeout_ms[0] = <uint32_t>(_timeout("timeout", timeout) * 1000)
        self.order[0] = 0
        self.norder = 1

    @property
    def timeout(self) -> float:
        """The affinity timeout in seconds."""
        return self.timeout_ms[0] / 1000.0

    def lookup(self, client, double now) -> int:
        """The backend this client is bound to, or -1; a hit refreshes the binding."""
        cdef ct_key k
        memset(&k, 0, sizeof(ct_key))
        pack_addr(client, k.addr, "client")
        return self.lookup_c(&k, self.now_ms(now))

    def insert(self, client, backend, double now) -> None:
        """Bind ``client`` to ``backend`` as of ``now``."""
        cdef ct_key k
        memset(&k, 0, sizeof(ct_key))
        pack_addr(client, k.addr, "client")
        if self.insert_c(&k, _backend_id(backend), self.now_ms(now)) < 0:
            raise MemoryError("AffinityTable: no memory for the per-backend lists")

    def remove(self, client) -> bool:
        """Forget ``client``'s binding; return whether there was one."""
        cdef ct_key k
        memset(&k, 0, sizeof(ct_key))
        pack_addr(client, k.addr, "client")
        return self.remove_c(&k)

    def entries(self) -> list:
        """Every binding as ``(client, backend)``, least recently used first."""
        return [(_addr_str(s), b) for _, s, _, _, _, b, _, _ in self._entries()]


def pack_address(addr) -> bytes:
    """The 16 bytes a table keys ``addr`` by (IPv4 as ``::ffff:a.b.c.d``)."""
    cdef uint8_t out[16]
    pack_addr(addr, out, "addr")
    return bytes(out[:16])


def entry_size() -> int:
    """Bytes of one slab entry (the index adds 6 bytes per entry of capacity)."""
    return sizeof(ct_entry)


# -- the single-call entry points ---------------------------------------------------------------

cdef inline object _lookup(ConnTable t, object proto, object src, object sport, object dst,
                           object dport, double now):
    cdef ct_key k
    _key(&k, proto, src, sport, dst, dport)
    _settle(t)
    return _lookup_i(t, &k, ct_hash(&k, t.seed), _now_ms(t, now))


cdef inline object _insert(ConnTable t, object proto, object src, object sport, object dst,
                           object dport, object backend, double now):
    cdef ct_key k
    cdef int32_t b
    cdef uint32_t ms
    _key(&k, proto, src, sport, dst, dport)
    b = _backend_id(backend)
    ms = _now_ms(t, now)
    if t._ensure_backend(b) < 0:
        raise MemoryError("ConnTable: no memory for the per-backend lists")
    # Nothing is left to fail, and the caller needs no answer: the insert is applied on the
    # table's next use (``_settle``), its index slot fetched meanwhile, so the cache miss of
    # that slot overlaps the caller's own work instead of stalling this call.
    _settle(t)
    t.pend_key = k
    t.pend_hash = ct_hash(&k, t.seed)
    t.pend_backend = b
    t.pend_now = ms
    t.pending = True
    ct_prefetch(&t.idx[_home(t.pend_hash, t.nslots)])
    return None
