# cython: language_level=3, embedsignature=True
"""The text one service port contributes to the iptables and nftables rule sets, written in C.

A cold full render writes about 234,000 iptables lines (or 150,000 to 300,000 nft lines) for
10,000 services; built with f-strings, one string per line, that is most of its time. Here each
port's rules go into one growing byte buffer and come out as a few strings. The readable twins,
and the reference these writers are tested against byte for byte, are
``RuleRenderer.port_rules_py`` (iptables) and ``NftRenderer.port_objects_py`` (nftables); a
writer returns None for a port shape it leaves to its twin. ``plan_port`` and ``plan_key`` are
the twins of netfilter.py's. ``netfilter.compiled`` picks them unless ``LBCORE_NO_EXTENSIONS``
is set.
"""

from libc.stdint cimport uint64_t
from libc.stdlib cimport free, realloc
from libc.string cimport memcmp, memcpy, memmove, strlen
from cpython.unicode cimport PyUnicode_AsUTF8AndSize, PyUnicode_DecodeUTF8

from lbcore._hashing_c cimport XXH3_64bits

from lbcore_plugins.netfilter import (
    SUPPORTED_PROTOCOLS,
    PortPlan,
    probability_texts,
    uniform_probability_texts,
)

cdef extern from "Python.h":
    bint PyUnicode_IS_ASCII(object s)
    void PyObject_GC_UnTrack(void* op)


cdef inline tuple untracked(tuple lines):
    """``lines`` (strings only, so never in a reference cycle) taken off the collector's lists,
    as CPython does itself at the first collection: a cold render makes 10,000s of them."""
    PyObject_GC_UnTrack(<void*>lines)
    return lines


# ---------------------------------------------------------------------------------------------
# A growing byte buffer
# ---------------------------------------------------------------------------------------------

cdef struct Buf:
    char* data
    Py_ssize_t size
    Py_ssize_t cap


cdef int grow(Buf* b, Py_ssize_t extra) except -1:
    cdef Py_ssize_t cap = b.cap * 2 if b.cap else 4096
    while cap < b.size + extra:
        cap *= 2
    cdef char* data = <char*>realloc(b.data, cap)
    if data == NULL:
        raise MemoryError()
    b.data = data
    b.cap = cap
    return 0


cdef inline int put(Buf* b, const char* s, Py_ssize_t n) except -1:
    if b.size + n > b.cap:
        grow(b, n)
    memcpy(b.data + b.size, s, n)
    b.size += n
    return 0


cdef inline int put_c(Buf* b, const char* s) except -1:
    # inlined, the compiler folds strlen of a literal into a constant
    return put(b, s, <Py_ssize_t>strlen(s))


cdef inline int put_s(Buf* b, str s) except -1:
    cdef Py_ssize_t n
    cdef const char* p = PyUnicode_AsUTF8AndSize(s, &n)
    return put(b, p, n)


cdef inline int put_buf(Buf* b, Buf* src) except -1:
    return put(b, src.data, src.size)


cdef int put_int(Buf* b, long long v) except -1:
    cdef char tmp[24]
    cdef int i = 24
    cdef bint neg = v < 0
    cdef unsigned long long u = <unsigned long long>(-v) if neg else <unsigned long long>v
    while True:
        i -= 1
        tmp[i] = <char>(48 + u % 10)
        u //= 10
        if u == 0:
            break
    if neg:
        i -= 1
        tmp[i] = 45  # '-'
    return put(b, tmp + i, 24 - i)


cdef const char* HEX = b"0123456789ABCDEF"


cdef int put_hex(Buf* b, uint64_t h, int digits) except -1:
    """The first ``digits`` of the 16 upper-case hex digits of ``h`` (netfilter.chain_hash)."""
    cdef char tmp[16]
    cdef int i
    for i in range(16):
        tmp[15 - i] = HEX[h & 15]
        h >>= 4
    return put(b, tmp, digits)


cdef inline int newline(Buf* b) except -1:
    """A line separator before every line but the first."""
    if b.size:
        put(b, b"\n", 1)
    return 0


cdef inline uint64_t hash_buf(Buf* b):
    return XXH3_64bits(b.data, <size_t>b.size)


cdef inline str text_of(Buf* b):
    return PyUnicode_DecodeUTF8(b.data, b.size, NULL)


cdef inline void free_buf(Buf* b) noexcept:
    free(b.data)
    b.data = NULL
    b.size = b.cap = 0


cdef int put_lower(Buf* b, str s) except -1:
    cdef Py_ssize_t n, i
    cdef const char* p = PyUnicode_AsUTF8AndSize(s, &n)
    if b.size + n > b.cap:
        grow(b, n)
    for i in range(n):
        b.data[b.size + i] = p[i] + 32 if 65 <= p[i] <= 90 else p[i]
    b.size += n
    return 0


cdef int put_name_part(Buf* b, const char* p, Py_ssize_t n) except -1:
    """nftables.py's ``_name_part`` of ASCII text: what is not ``[A-Za-z0-9_./-]`` becomes '.'."""
    cdef Py_ssize_t i
    cdef char c
    if b.size + n > b.cap:
        grow(b, n)
    for i in range(n):
        c = p[i]
        if not (48 <= c <= 57 or 65 <= c <= 90 or 97 <= c <= 122 or c == 95 or c == 46 or c == 47 or c == 45):
            c = 46
        b.data[b.size + i] = c
    b.size += n
    return 0


cdef inline int put_name_part_s(Buf* b, str s) except -1:
    cdef Py_ssize_t n
    cdef const char* p = PyUnicode_AsUTF8AndSize(s, &n)
    return put_name_part(b, p, n)


cdef struct Endpoint:
    const char* ip  # the UTF-8 of the EndpointInfo's ip, which the plan keeps alive
    Py_ssize_t ip_len
    long long port
    long long weight
    uint64_t hash  # XXH3 of the endpoint's id: its chain name


cdef struct Endpoints:
    Endpoint* items
    Py_ssize_t n
    Py_ssize_t cap


cdef int read_endpoints(Endpoints* out, tuple eps, Buf* key, Py_ssize_t id_len,
                        bint v6) except -1:
    """Each endpoint's ip, port and weight (read once), and the hash of its id, the service's
    id ``key[:id_len]`` + ``/ip:port``; with ``key`` NULL no hash (the ``maps`` form names no
    chain after an endpoint). 1 when an ip is not ASCII (left to the readable twin)."""
    cdef Py_ssize_t i, n = len(eps)
    cdef Endpoint* e
    if n > out.cap:
        e = <Endpoint*>realloc(out.items, n * sizeof(Endpoint))
        if e == NULL:
            raise MemoryError()
        out.items = e
        out.cap = n
    out.n = n
    for i in range(n):
        ep = eps[i]
        ip = ep.ip
        if not PyUnicode_IS_ASCII(ip):
            return 1
        e = &out.items[i]
        e.ip = PyUnicode_AsUTF8AndSize(ip, &e.ip_len)
        e.port = ep.port
        e.weight = ep.weight
        e.hash = 0
        if key != NULL:
            key.size = id_len
            put(key, b"/", 1)
            put_address(key, e, v6)
            e.hash = hash_buf(key)
    return 0


cdef Endpoints* subset(Endpoints* scratch, Endpoints* read, tuple eps, tuple all_eps, Buf* key,
                       Py_ssize_t id_len, bint v6) except NULL:
    """``eps`` (a part of ``all_eps``, already in ``read``) as read: ``read`` itself when they
    are the same tuple, else read into ``scratch`` (every ip was ASCII in ``all_eps``)."""
    if eps is all_eps:
        return read
    read_endpoints(scratch, eps, key, id_len, v6)
    return scratch


cdef bint same_address(Endpoint* a, Endpoint* b) noexcept:
    return a.port == b.port and a.ip_len == b.ip_len and memcmp(a.ip, b.ip, <size_t>a.ip_len) == 0


cdef int put_address(Buf* b, Endpoint* e, bint v6) except -1:
    """``ip:port``, with brackets for IPv6."""
    if v6:
        put(b, b"[", 1)
        put(b, e.ip, e.ip_len)
        put(b, b"]:", 2)
    else:
        put(b, e.ip, e.ip_len)
        put(b, b":", 1)
    return put_int(b, e.port)


cdef bint seen_before(Endpoints* eps, Py_ssize_t i) noexcept:
    """Whether endpoint ``i`` repeats an earlier one (a repeated endpoint has one chain)."""
    cdef Py_ssize_t j
    for j in range(i):
        if eps.items[j].hash == eps.items[i].hash:
            return True
    return False


cdef node_port_of(sp):
    """``PortPlan.node_port`` of ``sp``'s plans, without a Python-level property call."""
    return sp.node_port if sp.type in ("NodePort", "LoadBalancer") else None


cdef bint distinct(tuple items):
    """Whether ``items`` has no repeats (checked only when there are two or more)."""
    return len(items) < 2 or len(set(items)) == len(items)


# ---------------------------------------------------------------------------------------------
# iptables
# ---------------------------------------------------------------------------------------------

cdef class IptablesWriter:
    """Writes what one service port contributes to the iptables-restore input of one family."""

    cdef bint masquerade_all, busy
    cdef str cidr
    cdef list node_dsts
    # output: declarations, rules, one dispatch line; scratch: ids, names, rule heads
    cdef Buf decl, body, line, key, name, svc, ext, head
    cdef Endpoints all_eps, eps

    def __init__(self, bint masquerade_all, cidr, list node_dst_matches):
        """``cidr``: the family's pod network or None; ``node_dst_matches``: the ``-d ADDR `` (or
        addrtype) match texts of this family's NodePorts, as ``RuleRenderer`` builds them."""
        self.masquerade_all = masquerade_all
        self.cidr = cidr or None
        self.node_dsts = node_dst_matches

    def __dealloc__(self):
        free_buf(&self.decl)
        free_buf(&self.body)
        free_buf(&self.line)
        free_buf(&self.key)
        free_buf(&self.name)
        free_buf(&self.svc)
        free_buf(&self.ext)
        free_buf(&self.head)
        free(self.all_eps.items)
        free(self.eps.items)

    def write(self, plan):
        """(the ``:chain - [0:0]`` declarations, the rules of those chains, the lines of nat
        LBCORE-SERVICES, of LBCORE-NODEPORTS and of filter LBCORE-SERVICES) of ``plan``, as
        ``RuleRenderer.port_rules`` renders them; None when a name or address is not ASCII (or
        while another call uses the writer)."""
        if self.busy:  # its buffers are in use by another thread: leave it to the twin
            return None
        self.busy = True
        try:
            return self._write(plan)
        finally:
            self.busy = False

    cdef object _write(self, plan):
        sp = plan.sp
        cdef bint v6 = plan.family == 6
        cdef tuple eps = plan.cluster_endpoints
        local = plan.local_endpoints
        # PortPlan.all_endpoints is the cluster endpoints themselves without a local policy
        cdef tuple all_eps = eps if local is None else plan.all_endpoints
        cdef str proto = sp.protocol
        cdef bint affinity = sp.session_affinity == "ClientIP"
        cdef Py_ssize_t i, id_len
        cdef Buf* body = &self.body
        cdef Buf* line = &self.line
        cdef Endpoint* e
        services = nodeports = reject = ()
        if not (PyUnicode_IS_ASCII(sp.namespace) and PyUnicode_IS_ASCII(sp.name)
                and PyUnicode_IS_ASCII(sp.port_name)):
            return None
        port = sp.port
        self.decl.size = self.body.size = self.name.size = self.key.size = 0
        # name: ns/name:port_name; key: the service's id, the stem of each endpoint's id
        put_s(&self.name, sp.namespace)
        put(&self.name, b"/", 1)
        put_s(&self.name, sp.name)
        put(&self.name, b":", 1)
        put_s(&self.name, sp.port_name)
        put_buf(&self.key, &self.name)
        put(&self.key, b"/", 1)
        put_lower(&self.key, proto)
        id_len = self.key.size
        h = hash_buf(&self.key)
        self.svc.size = self.ext.size = 0
        put(&self.svc, b"LBCORE-SVC-", 11)
        put_hex(&self.svc, h, 16)
        put(&self.ext, b"LBCORE-EXT-", 11)
        put_hex(&self.ext, h, 16)
        if read_endpoints(&self.all_eps, all_eps, &self.key, id_len, v6):
            return None

        if eps:
            services = []
            for cip in plan.cluster_ips:
                line.size = 0
                put_c(line, b'-A LBCORE-SERVICES -m comment --comment "')
                put_buf(line, &self.name)
                put_c(line, b' cluster IP" -p ')
                self._proto_dst_port(proto, cip, port)
                put(line, b" -j ", 4)
                put_buf(line, &self.svc)
                services.append(text_of(line))
            services = tuple(services)
            self._head(&self.svc)
            if self.masquerade_all or self.cidr is not None:
                for cip in plan.cluster_ips:
                    newline(body)
                    put_buf(body, &self.head)
                    put(body, b" -p ", 4)
                    put_lower(body, proto)
                    put(body, b" -d ", 4)
                    put_s(body, cip)
                    put(body, b" --dport ", 9)
                    put_int(body, port)
                    if not self.masquerade_all:
                        put(body, b" ! -s ", 6)
                        put_s(body, self.cidr)
                    put_c(body, b" -j LBCORE-MARK-MASQ")
            self._balance(subset(&self.eps, &self.all_eps, eps, all_eps, &self.key, id_len, v6),
                          affinity, sp.affinity_timeout)
            self._declare(&self.svc)
        else:
            reject = []
            for cip in plan.cluster_ips:
                line.size = 0
                put_c(line, b'-A LBCORE-SERVICES -m comment --comment "')
                put_buf(line, &self.name)
                put_c(line, b' has no endpoints" -p ')
                self._proto_dst_port(proto, cip, port)
                put_c(line, b" -j REJECT")
                reject.append(text_of(line))

        node_port = node_port_of(sp)
        if node_port:
            ext_eps = eps if local is None else local  # PortPlan.external_endpoints
            if ext_eps:
                if local is None:
                    newline(body)
                    put(body, b"-A ", 3)
                    put_buf(body, &self.ext)
                    put_c(body, b' -m comment --comment "')
                    put_buf(body, &self.name)
                    put_c(body, b' external" -j LBCORE-MARK-MASQ\n-A ')
                    put_buf(body, &self.ext)
                    put(body, b" -j ", 4)
                    put_buf(body, &self.svc)
                else:
                    # externalTrafficPolicy Local: no SNAT, only this node's endpoints
                    self._head(&self.ext)
                    self._balance(subset(&self.eps, &self.all_eps, ext_eps, all_eps, &self.key,
                                         id_len, v6), affinity, sp.affinity_timeout)
                self._declare(&self.ext)
                line.size = 0
                put_c(line, b'-A LBCORE-NODEPORTS -m comment --comment "')
                put_buf(line, &self.name)
                put_c(line, b'" -p ')
                put_lower(line, proto)
                put(line, b" --dport ", 9)
                put_int(line, node_port)
                put(line, b" -j ", 4)
                put_buf(line, &self.ext)
                nodeports = (text_of(line),)
            else:
                reject = list(reject)
                for dst in self.node_dsts:
                    line.size = 0
                    put_c(line, b'-A LBCORE-SERVICES -m comment --comment "')
                    put_buf(line, &self.name)
                    put_c(line, b' has no endpoints" ')
                    put_s(line, dst)
                    put(line, b"-p ", 3)
                    put_lower(line, proto)
                    put(line, b" --dport ", 9)
                    put_int(line, node_port)
                    put_c(line, b" -j REJECT")
                    reject.append(text_of(line))

        for i in range(self.all_eps.n):
            if seen_before(&self.all_eps, i):
                continue
            e = &self.all_eps.items[i]
            self.svc.size = 0  # from here on the endpoint chain's name
            put(&self.svc, b"LBCORE-SEP-", 11)
            put_hex(&self.svc, e.hash, 16)
            self._head(&self.svc)
            newline(body)
            put_buf(body, &self.head)
            put(body, b" -s ", 4)
            put(body, e.ip, e.ip_len)
            put_c(body, b" -j LBCORE-MARK-MASQ\n")
            put_buf(body, &self.head)
            put(body, b" -p ", 4)
            put_lower(body, proto)
            put(body, b" ", 1)
            if affinity:
                put_c(body, b"-m recent --name ")
                put_buf(body, &self.svc)
                put_c(body, b" --set ")
            put_c(body, b"-j DNAT --to-destination ")
            put_address(body, e, v6)
            self._declare(&self.svc)
        return (text_of(&self.decl), text_of(body), untracked(services), untracked(nodeports),
                untracked(tuple(reject)))

    cdef int _head(self, Buf* chain) except -1:
        """``-A CHAIN -m comment --comment "NAME"``, how each rule of ``chain`` begins."""
        self.head.size = 0
        put(&self.head, b"-A ", 3)
        put_buf(&self.head, chain)
        put_c(&self.head, b' -m comment --comment "')
        put_buf(&self.head, &self.name)
        return put(&self.head, b'"', 1)

    cdef int _proto_dst_port(self, str proto, str ip, object port) except -1:
        put_lower(&self.line, proto)
        put(&self.line, b" -d ", 4)
        put_s(&self.line, ip)
        put(&self.line, b" --dport ", 9)
        return put_int(&self.line, port)

    cdef int _declare(self, Buf* chain) except -1:
        newline(&self.decl)
        put(&self.decl, b":", 1)
        put_buf(&self.decl, chain)
        return put(&self.decl, b" - [0:0]", 8)

    cdef int _balance(self, Endpoints* eps, bint affinity, object timeout) except -1:
        """Affinity checks, then one statistic rule per endpoint (``RuleRenderer._balance``),
        each starting with ``self.head``."""
        cdef Py_ssize_t i, n = eps.n
        cdef Buf* body = &self.body
        cdef bint weighted = False
        for i in range(n):
            if eps.items[i].weight > 1:
                weighted = True
        cdef list probabilities = (
            probability_texts([eps.items[i].weight for i in range(n)]) if weighted
            else uniform_probability_texts(n)
        )
        if affinity:
            for i in range(n):
                newline(body)
                put_buf(body, &self.head)
                put_c(body, b" -m recent --name LBCORE-SEP-")
                put_hex(body, eps.items[i].hash, 16)
                put_c(body, b" --rcheck --seconds ")
                put_int(body, timeout)
                put_c(body, b" --reap -j LBCORE-SEP-")
                put_hex(body, eps.items[i].hash, 16)
        for i in range(n):
            newline(body)
            put_buf(body, &self.head)
            if i < n - 1:
                put_c(body, b" -m statistic --mode random --probability ")
                put_s(body, probabilities[i])
            put_c(body, b" -j LBCORE-SEP-")
            put_hex(body, eps.items[i].hash, 16)
        return 0


# ---------------------------------------------------------------------------------------------
# nftables
# ---------------------------------------------------------------------------------------------

cdef long long gcd(long long a, long long b) noexcept:
    while b:
        a, b = b, a % b
    return a


#: the maps and sets a ``maps`` port has elements in, per family, in the order
#: ``NftRenderer.port_objects_maps`` fills them
cdef tuple MAPS_NAMES4 = tuple([f"{name}-v4" for name in (
    "service-ips", "service-endpoints", "no-endpoint-services", "service-nodeports",
    "nodeport-endpoints", "no-endpoint-nodeports", "hairpin")])
cdef tuple MAPS_NAMES6 = tuple([name[:-1] + "6" for name in MAPS_NAMES4])


cdef class NftWriter:
    """Writes what one service port puts in the ``inet lbcore`` table: the ``cascade`` and
    ``inline`` endpoint selections without ClientIP affinity, and the elements of a ``maps``
    port without it (other shapes: None)."""

    cdef bint masquerade_all, inline, maps, supported, busy
    cdef dict cidrs
    # output: chain definitions; scratch: a rule, ids, names
    cdef Buf chains, rule, key, label, svc, ext, ep
    cdef Endpoints all_eps, eps
    cdef long long* weights
    cdef Py_ssize_t weights_cap

    def __init__(self, bint masquerade_all, dict cluster_cidrs, str endpoint_selection):
        """``cluster_cidrs``: family -> pod network; ``endpoint_selection`` as the option."""
        self.masquerade_all = masquerade_all
        self.cidrs = cluster_cidrs
        self.inline = endpoint_selection == "inline"
        self.maps = endpoint_selection == "maps"
        self.supported = endpoint_selection in ("cascade", "inline", "maps")

    def __dealloc__(self):
        free_buf(&self.chains)
        free_buf(&self.rule)
        free_buf(&self.key)
        free_buf(&self.label)
        free_buf(&self.svc)
        free_buf(&self.ext)
        free_buf(&self.ep)
        free(self.all_eps.items)
        free(self.eps.items)
        free(self.weights)

    def write(self, plan):
        """(map -> its ``key : verdict`` elements, the set definitions, the chain definitions)
        of ``plan``, as ``PortObjects.text`` gives them for ``NftRenderer.port_objects``; None for
        a shape this writer leaves to it (affinity, ``vmap``, ``map``, repeated ClusterIPs,
        names or addresses that are not ASCII) and while another call uses the writer. A
        ``maps`` port has elements only (no sets, no chains)."""
        if self.busy:  # its buffers are in use by another thread: leave it to the twin
            return None
        self.busy = True
        try:
            return self._write(plan)
        finally:
            self.busy = False

    cdef object _write(self, plan):
        sp = plan.sp
        if not self.supported or sp.session_affinity == "ClientIP":
            return None
        cdef tuple cips = plan.cluster_ips
        if not distinct(cips):
            return None
        if self.maps:
            return self._write_maps(plan, sp, cips)
        if not (PyUnicode_IS_ASCII(sp.namespace) and PyUnicode_IS_ASCII(sp.name)
                and PyUnicode_IS_ASCII(sp.port_name)):
            return None
        cdef int fam = plan.family
        cdef bint v6 = fam == 6
        cdef const char* ip = b"ip6" if v6 else b"ip"
        cdef tuple eps = plan.cluster_endpoints
        local = plan.local_endpoints
        # PortPlan.all_endpoints is the cluster endpoints themselves without a local policy
        cdef tuple all_eps = eps if local is None else plan.all_endpoints
        cdef str proto = sp.protocol
        cdef str lproto = proto.lower()
        cidr = self.cidrs.get(fam)
        port = sp.port
        cdef Py_ssize_t i, id_len
        cdef dict elements = {}
        cdef Buf* rule = &self.rule
        cdef Endpoint* e
        self.chains.size = self.key.size = self.label.size = 0
        # label: ns/name/proto/port-name; key: "service|" + the service's id
        put_s(&self.label, sp.namespace)
        put(&self.label, b"/", 1)
        put_s(&self.label, sp.name)
        put(&self.label, b"/", 1)
        put_s(&self.label, lproto)
        put(&self.label, b"/", 1)
        put_name_part_s(&self.label, sp.port_name or str(port))
        put_c(&self.key, b"service|")
        put_s(&self.key, sp.namespace)
        put(&self.key, b"/", 1)
        put_s(&self.key, sp.name)
        put(&self.key, b":", 1)
        put_s(&self.key, sp.port_name)
        put(&self.key, b"/", 1)
        put_s(&self.key, lproto)
        self.svc.size = 0
        put_c(&self.svc, b"service-")
        put_hex(&self.svc, hash_buf(&self.key), 8)
        put(&self.svc, b"-", 1)
        put_buf(&self.svc, &self.label)
        # the same id behind "external|" (9 bytes against 8)
        self.ext.size = 0
        put(&self.ext, b"external|", 9)
        put(&self.ext, self.key.data + 8, self.key.size - 8)
        h = hash_buf(&self.ext)
        self.ext.size = 0
        put_c(&self.ext, b"external-")
        put_hex(&self.ext, h, 8)
        put(&self.ext, b"-", 1)
        put_buf(&self.ext, &self.label)
        # from here on key is the service's id alone, the stem of each endpoint's id
        memmove(self.key.data, self.key.data + 8, self.key.size - 8)
        self.key.size -= 8
        id_len = self.key.size
        if read_endpoints(&self.all_eps, all_eps, &self.key, id_len, v6):
            return None
        if eps:
            svc = text_of(&self.svc)
            elements[f"service-ips-v{fam}"] = untracked(
                tuple([f"{cip} . {lproto} . {port} : goto {svc}" for cip in cips]))
            self._open(&self.svc)
            if self.masquerade_all or cidr:
                for cip in cips:
                    self._rule()
                    put_c(rule, ip)
                    put_c(rule, b" daddr ")
                    put_s(rule, cip)
                    put(rule, b" ", 1)
                    put_s(rule, lproto)
                    put_c(rule, b" dport ")
                    put_int(rule, port)
                    if not self.masquerade_all:
                        put(rule, b" ", 1)
                        put_c(rule, ip)
                        put_c(rule, b" saddr != ")
                        put_s(rule, cidr)
                    put_c(rule, b" jump mark-for-masquerade")
                    put_buf(&self.chains, rule)
            self._choose(subset(&self.eps, &self.all_eps, eps, all_eps, &self.key, id_len, v6),
                         v6, ip, lproto)
            put(&self.chains, b"\n\t}", 3)
        else:
            elements[f"no-endpoint-services-v{fam}"] = untracked(
                tuple([f"{cip} . {lproto} . {port} : goto reject-chain" for cip in cips]))
        node_port = node_port_of(sp)
        if node_port:
            ext_eps = eps if local is None else local  # PortPlan.external_endpoints
            if ext_eps:
                self._open(&self.ext)
                if local is None:
                    put_c(&self.chains, b"\n\t\tjump mark-for-masquerade\n\t\tgoto ")
                    put_buf(&self.chains, &self.svc)
                else:
                    self._choose(subset(&self.eps, &self.all_eps, ext_eps, all_eps, &self.key,
                                        id_len, v6), v6, ip, lproto)
                put(&self.chains, b"\n\t}", 3)
                elements[f"service-nodeports-v{fam}"] = untracked(
                    (f"{lproto} . {node_port} : goto {text_of(&self.ext)}",))
            else:
                elements[f"no-endpoint-nodeports-v{fam}"] = untracked(
                    (f"{lproto} . {node_port} : goto reject-chain",))
        if not self.inline:
            for i in range(self.all_eps.n):
                if seen_before(&self.all_eps, i):
                    continue
                e = &self.all_eps.items[i]
                self._endpoint_chain(e, v6)
                self._open(&self.ep)
                self._rule()
                self._hairpin(e, ip)
                put_buf(&self.chains, rule)
                self._rule()
                self._dnat(e, ip, lproto, v6)
                put_buf(&self.chains, rule)
                put(&self.chains, b"\n\t}", 3)
        # a dict of untracked tuples stays untracked, and so does this tuple
        return untracked((elements, "", text_of(&self.chains)))

    cdef object _write_maps(self, plan, sp, tuple cips):
        """``NftRenderer.port_objects_maps`` of a port without ClientIP affinity: a ``goto
        pick-...-<n>`` element and n slot elements per ClusterIP and NodePort (or a
        ``no-endpoint`` set element), and a ``hairpin`` element per endpoint."""
        cdef Py_ssize_t i, j
        cdef long long slots = 0
        cdef int fam = plan.family
        cdef tuple names = MAPS_NAMES6 if fam == 6 else MAPS_NAMES4
        cdef tuple eps = plan.cluster_endpoints
        local = plan.local_endpoints
        # PortPlan.all_endpoints is the cluster endpoints themselves without a local policy
        cdef tuple all_eps = eps if local is None else plan.all_endpoints
        cdef str lproto = sp.protocol.lower()
        cdef dict elements = {}
        cdef list heads, items
        cdef Buf* key = &self.key
        cdef Buf* item = &self.rule
        cdef Endpoints* chosen = NULL
        cdef Endpoint* e
        for cip in cips:
            if not PyUnicode_IS_ASCII(cip):
                return None
        if read_endpoints(&self.all_eps, all_eps, NULL, 0, False):
            return None
        port = sp.port
        heads, items = [], []
        if eps:
            chosen = subset(&self.eps, &self.all_eps, eps, all_eps, NULL, 0, False)
            slots = self._weights(chosen)
        for cip in cips:
            key.size = 0  # addr . proto . port
            put_s(key, cip)
            put(key, b" . ", 3)
            put_s(key, lproto)
            put(key, b" . ", 3)
            put_int(key, port)
            if eps:
                item.size = 0
                put_buf(item, key)
                put_c(item, b" : goto pick-v")
                put_int(item, fam)
                put(item, b"-", 1)
                put_int(item, slots)
                heads.append(text_of(item))
                self._slot_items(items, chosen)
            else:
                heads.append(text_of(key))
        if eps:
            elements[names[0]] = untracked(tuple(heads))
            elements[names[1]] = untracked(tuple(items))
        else:
            elements[names[2]] = untracked(tuple(heads))
        node_port = node_port_of(sp)
        if node_port:
            ext_eps = eps if local is None else local  # PortPlan.external_endpoints
            key.size = 0  # proto . node port
            put_s(key, lproto)
            put(key, b" . ", 3)
            put_int(key, node_port)
            if ext_eps:
                chosen = subset(&self.eps, &self.all_eps, ext_eps, all_eps, NULL, 0, False)
                slots = self._weights(chosen)
                item.size = 0
                put_buf(item, key)
                put_c(item, b" : goto pick-external-v" if local is None else b" : goto pick-local-v")
                put_int(item, fam)
                put(item, b"-", 1)
                put_int(item, slots)
                elements[names[3]] = untracked((text_of(item),))
                items = []
                self._slot_items(items, chosen)
                elements[names[4]] = untracked(tuple(items))
            else:
                elements[names[5]] = untracked((text_of(key),))
        if self.all_eps.n:
            items = []
            for i in range(self.all_eps.n):
                e = &self.all_eps.items[i]
                for j in range(i):  # a repeated endpoint is one element
                    if same_address(&self.all_eps.items[j], e):
                        break
                else:
                    item.size = 0  # ip . ip . proto . port
                    put(item, e.ip, e.ip_len)
                    put(item, b" . ", 3)
                    put(item, e.ip, e.ip_len)
                    put(item, b" . ", 3)
                    put_s(item, lproto)
                    put(item, b" . ", 3)
                    put_int(item, e.port)
                    items.append(text_of(item))
            elements[names[6]] = untracked(tuple(items))
        # a dict of untracked tuples stays untracked, and so does this tuple
        return untracked((elements, "", ""))

    cdef int _slot_items(self, list out, Endpoints* eps) except -1:
        """``<self.key> . <slot> : <ip> . <port>`` for each slot, ``self.weights[i]`` slots to
        endpoint i (nftables.py's ``_slots``)."""
        cdef Py_ssize_t i, slot = 0
        cdef long long r
        cdef Buf* item = &self.rule
        cdef Endpoint* e
        for i in range(eps.n):
            e = &eps.items[i]
            for r in range(self.weights[i]):
                item.size = 0
                put_buf(item, &self.key)
                put(item, b" . ", 3)
                put_int(item, slot)
                put(item, b" : ", 3)
                put(item, e.ip, e.ip_len)
                put(item, b" . ", 3)
                put_int(item, e.port)
                out.append(text_of(item))
                slot += 1
        return 0

    cdef long long _weights(self, Endpoints* eps) except -1:
        """Each endpoint's weight (at least 1) over the gcd of them all, in ``self.weights``;
        their sum."""
        cdef Py_ssize_t i, n = eps.n
        cdef long long g = 0, total = 0
        if n > self.weights_cap:
            self.weights = <long long*>realloc(self.weights, n * sizeof(long long))
            if self.weights == NULL:
                self.weights_cap = 0
                raise MemoryError()
            self.weights_cap = n
        for i in range(n):
            self.weights[i] = eps.items[i].weight if eps.items[i].weight > 1 else 1
            g = gcd(self.weights[i], g)
        for i in range(n):
            self.weights[i] //= g
            total += self.weights[i]
        return total

    cdef int _open(self, Buf* name) except -1:
        newline(&self.chains)
        put_c(&self.chains, b"\tchain ")
        put_buf(&self.chains, name)
        return put(&self.chains, b" {", 2)

    cdef int _rule(self) except -1:
        """Start a rule in ``self.rule`` (with its line break and indent)."""
        self.rule.size = 0
        return put(&self.rule, b"\n\t\t", 3)

    cdef int _endpoint_chain(self, Endpoint* e, bint v6) except -1:
        """``endpoint-<hash>-<label>__<ip>/<port>`` into ``self.ep``."""
        self.ep.size = 0
        put_c(&self.ep, b"endpoint-")
        put_hex(&self.ep, e.hash, 8)
        put(&self.ep, b"-", 1)
        put_buf(&self.ep, &self.label)
        put(&self.ep, b"__", 2)
        if v6:
            put_name_part(&self.ep, e.ip, e.ip_len)
        else:
            put(&self.ep, e.ip, e.ip_len)
        put(&self.ep, b"/", 1)
        return put_int(&self.ep, e.port)

    cdef int _hairpin(self, Endpoint* e, const char* ip) except -1:
        put_c(&self.rule, ip)
        put_c(&self.rule, b" saddr ")
        put(&self.rule, e.ip, e.ip_len)
        return put_c(&self.rule, b" jump mark-for-masquerade")

    cdef int _dnat(self, Endpoint* e, const char* ip, str lproto, bint v6) except -1:
        put_c(&self.rule, b"meta l4proto ")
        put_s(&self.rule, lproto)
        put_c(&self.rule, b" dnat ")
        put_c(&self.rule, ip)
        put_c(&self.rule, b" to ")
        return put_address(&self.rule, e, v6)

    cdef int _choose(self, Endpoints* eps, bint v6, const char* ip, str lproto) except -1:
        """The rules that pick one of ``eps``: a ``numgen`` cascade to the endpoint chains
        (``NftRenderer._balance``) or, ``inline``, hairpin marks and a cascade of DNATs
        (``NftRenderer._dnat_inline``)."""
        cdef Py_ssize_t i, n = eps.n
        cdef long long rest = self._weights(eps)
        cdef Buf* rule = &self.rule
        if self.inline:
            for i in range(n):
                self._rule()
                self._hairpin(&eps.items[i], ip)
                put_buf(&self.chains, rule)
        for i in range(n):
            self._rule()
            if i < n - 1:
                put_c(rule, b"numgen random mod ")
                put_int(rule, rest)
                if self.weights[i] == 1:
                    put_c(rule, b" 0 ")
                else:
                    put_c(rule, b" < ")
                    put_int(rule, self.weights[i])
                    put(rule, b" ", 1)
                rest -= self.weights[i]
            if self.inline:
                self._dnat(&eps.items[i], ip, lproto, v6)
            else:
                put_c(rule, b"goto ")
                self._endpoint_chain(&eps.items[i], v6)
                put_buf(rule, &self.ep)
            put_buf(&self.chains, rule)
        return 0


# ---------------------------------------------------------------------------------------------
# Planning
# ---------------------------------------------------------------------------------------------

def plan_key(plan):
    """``netfilter.plan_key``: ``family|namespace/name:port_name/protocol``."""
    sp = plan.sp
    return f"{plan.family}|{sp.namespace}/{sp.name}:{sp.port_name}/{sp.protocol.lower()}"


def plan_port(sp, int family, node):
    """``netfilter.plan_port`` (its readable twin): the PortPlan of ``sp`` for ``family`` on
    ``node``, or None. A port whose ClusterIPs or endpoints all qualify keeps ``sp``'s own
    tuples instead of copies."""
    if sp.protocol not in SUPPORTED_PROTOCOLS:
        return None
    cdef bint v6 = family == 6
    ips = family_ips(sp.cluster_ips, v6)
    if not ips:
        return None
    endpoints = sp.endpoints
    cluster = usable_endpoints(endpoints, v6, node if sp.internal_traffic_policy == "Local" else None)
    local = None
    if sp.external_traffic_policy == "Local" and sp.type in ("NodePort", "LoadBalancer"):
        local = usable_endpoints(endpoints, v6, node)
    return PortPlan(sp, family, ips, cluster, local)


cdef tuple family_ips(tuple ips, bint v6):
    """The ClusterIPs of the family (not empty, not "None")."""
    cdef Py_ssize_t i, n = len(ips)
    for i in range(n):
        ip = ips[i]
        if not ip or ip == "None" or (":" in ip) != v6:
            return tuple([ip for ip in ips if ip and ip != "None" and (":" in ip) == v6])
    return ips


cdef tuple usable_endpoints(tuple endpoints, bint v6, node_name):
    """``netfilter.usable_endpoints``: ready ones; if none, serving and terminating ones."""
    cdef Py_ssize_t i, n = len(endpoints)
    for i in range(n):
        ep = endpoints[i]
        if ((":" in ep.ip) != v6 or (node_name is not None and ep.node_name != node_name)
                or not ep.ready or ep.terminating):
            break
    else:
        return endpoints  # all of them: the common case
    candidates = [
        ep for ep in endpoints
        if (":" in ep.ip) == v6 and (node_name is None or ep.node_name == node_name)
    ]
    ready = [ep for ep in candidates if ep.ready and not ep.terminating]
    if ready:
        return tuple(ready)
    return tuple([ep for ep in candidates if ep.serving and ep.terminating])
