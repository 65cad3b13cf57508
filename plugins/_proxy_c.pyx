# cython: language_level=3, embedsignature=True
"""The socket frontends' data path: a TCP/UDP proxy over epoll, run without the GIL.

One event loop per worker thread. TCP listeners are bound once per worker with ``SO_REUSEPORT``
so the kernel spreads new connections over the workers; a UDP listener belongs to one worker,
which keeps every flow of a client on one thread. Endpoint tables are pushed from Python on
each sync and picked from in C (round robin, smooth weighted round robin, random, least
connections by two random choices, source hash), with ClientIP affinity kept per service, so
the GIL is never taken on the data path.

Bytes are relayed through a user-space buffer; a direction that fills the buffer in one read
is a bulk transfer and switches to ``splice(2)`` through a pipe (zero copy), as HAProxy does
with ``splice-auto``. Sockets, pipes and structures are owned by the worker that uses them;
the Python thread changes listeners only through a command queue the workers drain, so no
file descriptor is closed under a running loop.
"""

cimport cython
from libc.stdint cimport uint32_t, uint64_t, uintptr_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcmp, memcpy, memset
from libc.errno cimport errno, EAGAIN, EINPROGRESS, ECONNREFUSED
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC
from posix.unistd cimport close, read, write, usleep

from lbcore._hashing_c cimport XXH3_64bits, hash_u64

# declarations (epoll, sockets, splice) and the data path's structures; included rather than a
# same-named .pxd because the extension's package name (lbcore_plugins) is not its directory
include "_proxy_c.pxi"

import ipaddress
import threading

from lbcore.errors import ConfigError

ALGORITHMS = {
    "round_robin": ALG_ROUND_ROBIN,
    "weighted_round_robin": ALG_WEIGHTED,
    "random": ALG_RANDOM,
    "least_connections": ALG_LEAST_CONN,
    "least_conn": ALG_LEAST_CONN,
    "source_hash": ALG_SOURCE_HASH,
}
SPLICE_MODES = {"never": 0, "auto": 1, "always": 2}
COUNTERS = (
    "accepted", "closed", "connect_failed", "retried", "rejected", "idle_closed", "spliced",
    "udp_flows", "udp_dropped_flows", "udp_datagrams", "paused",
)

cdef enum:
    DGRAM_MAX = 65536
    BATCH = 64


cdef inline double mono() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <double>ts.tv_sec + <double>ts.tv_nsec * 1e-9


cdef inline void set_nodelay(int fd) noexcept nogil:
    cdef int one = 1
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one))


cdef inline void close_with_reset(int fd) noexcept nogil:
    """Close so that the peer sees a reset (RST), not an orderly end of stream."""
    cdef linger lg
    lg.l_onoff = 1
    lg.l_linger = 0
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg))
    close(fd)


# ---------------------------------------------------------------------------------------------
# Endpoints, services, listeners: reference counted, shared between the workers
# ---------------------------------------------------------------------------------------------

cdef inline void ep_incref(Endpoint* ep) noexcept nogil:
    lb_atomic_add(&ep.refs, 1)


cdef inline void ep_decref(Endpoint* ep) noexcept nogil:
    if lb_atomic_add(&ep.refs, -1) == 0:
        free(ep)


cdef inline void ep_release(Endpoint* ep) noexcept nogil:
    """Give back what a pick took: one active connection and one reference."""
    lb_atomic_add(&ep.active, -1)
    ep_decref(ep)


cdef void svc_decref(Service* s) noexcept nogil:
    cdef int i
    if lb_atomic_add(&s.refs, -1) != 0:
        return
    for i in range(s.neps):
        lb_atomic_store(&s.eps[i].removed, 1)
        ep_decref(s.eps[i])
    for i in range(s.aff_cap):
        if s.aff[i].key != 0:
            ep_decref(s.aff[i].ep)
    free(s.eps)
    free(s.aff)
    pthread_mutex_destroy(&s.lock)
    free(s)


cdef void listener_decref(Listener* l) noexcept nogil:
    if lb_atomic_add(&l.refs, -1) == 0:
        svc_decref(l.svc)
        free(l)


cdef inline uint64_t client_ip_hash(sockaddr_storage* a) noexcept nogil:
    if a.ss_family == AF_INET6:
        return XXH3_64bits(&(<sockaddr_in6*>a).sin6_addr, 16) | 1
    return XXH3_64bits(&(<sockaddr_in*>a).sin_addr, 4) | 1


cdef inline uint64_t xorshift(uint64_t* state) noexcept nogil:
    cdef uint64_t x = state[0]
    x ^= x << 13
    x ^= x >> 7
    x ^= x << 17
    state[0] = x
    return x


# -- ClientIP affinity: open addressing, linear probing, rebuilt (never deleted from) ----------

cdef AffinityEntry* aff_find(Service* s, uint64_t key) noexcept nogil:
    cdef int i, mask
    if s.aff_cap == 0:
        return NULL
    mask = s.aff_cap - 1
    i = <int>(key & <uint64_t>mask)
    while s.aff[i].key != 0:
        if s.aff[i].key == key:
            return &s.aff[i]
        i = (i + 1) & mask
    return NULL


cdef void aff_insert(AffinityEntry* table, int cap, uint64_t key, Endpoint* ep,
                     double expires) noexcept nogil:
    cdef int mask = cap - 1
    cdef int i = <int>(key & <uint64_t>mask)
    while table[i].key != 0:
        i = (i + 1) & mask
    table[i].key = key
    table[i].ep = ep
    table[i].expires = expires


cdef void aff_rebuild(Service* s, double now, int grow) noexcept nogil:
    """Drop expired entries and entries of removed endpoints; double the table if ``grow``."""
    cdef int i, live = 0, cap = 64
    cdef AffinityEntry* table
    for i in range(s.aff_cap):
        if s.aff[i].key != 0:
            if s.aff[i].expires > now and not s.aff[i].ep.removed:
                live += 1
    while (live + grow) * 2 + 2 > cap:
        cap *= 2
    table = <AffinityEntry*>calloc(cap, sizeof(AffinityEntry))
    if table == NULL:
        return
    for i in range(s.aff_cap):
        if s.aff[i].key == 0:
            continue
        if s.aff[i].expires > now and not s.aff[i].ep.removed:
            aff_insert(table, cap, s.aff[i].key, s.aff[i].ep, s.aff[i].expires)
        else:
            ep_decref(s.aff[i].ep)
    free(s.aff)
    s.aff = table
    s.aff_cap = cap
    s.aff_used = live


cdef void aff_store(Service* s, uint64_t key, Endpoint* ep, double expires,
                    double now) noexcept nogil:
    cdef AffinityEntry* e = aff_find(s, key)
    if e != NULL:
        if e.ep != ep:
            ep_incref(ep)
            ep_decref(e.ep)
            e.ep = ep
        e.expires = expires
        return
    if (s.aff_used + 1) * 2 > s.aff_cap:
        aff_rebuild(s, now, 1)
        if (s.aff_used + 1) * 2 > s.aff_cap:
            return
    ep_incref(ep)
    aff_insert(s.aff, s.aff_cap, key, ep, expires)
    s.aff_used += 1


# -- picking ----------------------------------------------------------------------------------

cdef inline bint candidate(Endpoint* ep, double now, Endpoint** tried, int ntried,
                           bint ignore_down) noexcept nogil:
    cdef int i
    if not ep.pickable or ep.removed:
        return False
    if not ignore_down and ep.down_until > now:
        return False
    for i in range(ntried):
        if tried[i] == ep:
            return False
    return True


@cython.boundscheck(False)
@cython.wraparound(False)
cdef Endpoint* pick_from(Service* s, uint64_t client_hash, double now, Endpoint** tried,
                         int ntried, bint ignore_down) noexcept nogil:
    """The algorithm's choice among the candidates; indices stay in 0..neps-1 (modulo)."""
    cdef int n = s.neps, k, i, start
    cdef int total = 0
    cdef Endpoint* ep
    cdef Endpoint* best = NULL
    cdef Endpoint* other = NULL
    cdef uint64_t score, best_score = 0
    if n == 0:
        return NULL
    if s.algorithm == ALG_WEIGHTED:
        for i in range(n):
            ep = s.eps[i]
            if candidate(ep, now, tried, ntried, ignore_down):
                ep.current += ep.weight
                total += ep.weight
                if best == NULL or ep.current > best.current:
                    best = ep
        if best != NULL:
            best.current -= total
        return best
    if s.algorithm == ALG_SOURCE_HASH:
        for i in range(n):
            ep = s.eps[i]
            if candidate(ep, now, tried, ntried, ignore_down):
                score = hash_u64(client_hash ^ ep.id_hash)
                if best == NULL or score > best_score:
                    best = ep
                    best_score = score
        return best
    if s.algorithm == ALG_ROUND_ROBIN:
        start = <int>(s.rr % <uint64_t>n)
    else:
        start = <int>(xorshift(&s.rand) % <uint64_t>n)
    for k in range(n):
        i = (start + k) % n
        if candidate(s.eps[i], now, tried, ntried, ignore_down):
            best = s.eps[i]
            break
    if best == NULL:
        return NULL
    if s.algorithm == ALG_ROUND_ROBIN:
        s.rr = <uint64_t>(i + 1)
    elif s.algorithm == ALG_LEAST_CONN:
        # power of two choices: a second random candidate, keep the less loaded one
        start = <int>(xorshift(&s.rand) % <uint64_t>n)
        for k in range(n):
            i = (start + k) % n
            if s.eps[i] != best and candidate(s.eps[i], now, tried, ntried, ignore_down):
                other = s.eps[i]
                break
        if other != NULL and lb_atomic_load(&other.active) < lb_atomic_load(&best.active):
            best = other
    return best


cdef Endpoint* svc_pick(Service* s, sockaddr_storage* client, double now, Endpoint** tried,
                        int ntried) noexcept nogil:
    """Pick an endpoint for a new connection or flow; the caller owns one reference."""
    cdef Endpoint* ep = NULL
    cdef AffinityEntry* e
    cdef uint64_t h = client_ip_hash(client)
    pthread_mutex_lock(&s.lock)
    if s.affinity_timeout > 0:
        e = aff_find(s, h)
        if e != NULL and e.expires > now and candidate(e.ep, now, tried, ntried, False):
            ep = e.ep
    if ep == NULL:
        ep = pick_from(s, h, now, tried, ntried, False)
        if ep == NULL:
            # every endpoint is marked down: one of them may be back, better than refusing
            ep = pick_from(s, h, now, tried, ntried, True)
    if ep != NULL:
        if s.affinity_timeout > 0:
            aff_store(s, h, ep, now + s.affinity_timeout, now)
        ep_incref(ep)
        lb_atomic_add(&ep.active, 1)
    pthread_mutex_unlock(&s.lock)
    return ep


cdef void mark_down(Worker* w, Endpoint* ep) noexcept nogil:
    ep.down_until = w.now + w.cfg.down_time


# ---------------------------------------------------------------------------------------------
# TCP connections
# ---------------------------------------------------------------------------------------------

cdef void get_pipe(Worker* w, Half* h) noexcept nogil:
    cdef int fds[2]
    if w.npipes > 0:
        w.npipes -= 1
        h.pipe_r = w.pipe_pool[2 * w.npipes]
        h.pipe_w = w.pipe_pool[2 * w.npipes + 1]
        return
    if pipe2(fds, O_NONBLOCK | O_CLOEXEC) != 0:
        return
    if w.cfg.pipe_size > 0:
        fcntl(fds[0], F_SETPIPE_SZ, w.cfg.pipe_size)
    h.pipe_r = fds[0]
    h.pipe_w = fds[1]


cdef void put_pipe(Worker* w, Half* h) noexcept nogil:
    if h.pipe_r < 0:
        return
    if h.piped == 0 and w.npipes < 64:
        w.pipe_pool[2 * w.npipes] = h.pipe_r
        w.pipe_pool[2 * w.npipes + 1] = h.pipe_w
        w.npipes += 1
    else:
        close(h.pipe_r)
        close(h.pipe_w)
    h.pipe_r = -1
    h.pipe_w = -1


cdef inline void half_init(Half* h, char* buf) noexcept nogil:
    h.buf = buf
    h.pipe_r = -1
    h.pipe_w = -1


cdef Conn* conn_new(Worker* w, int cfd, Listener* l, sockaddr_storage* client) noexcept nogil:
    cdef Conn* c = <Conn*>calloc(1, sizeof(Conn))
    cdef char* buf
    if c == NULL:
        return NULL
    buf = <char*>malloc(2 * <size_t>w.cfg.buffer_size)
    if buf == NULL:
        free(c)
        return NULL
    c.cside.kind = K_CLIENT
    c.cside.conn = c
    c.bside.kind = K_BACKEND
    c.bside.conn = c
    c.cfd = cfd
    c.bfd = -1
    half_init(&c.up, buf)
    half_init(&c.down, buf + w.cfg.buffer_size)
    c.listener = l
    lb_atomic_add(&l.refs, 1)
    lb_atomic_add(&l.conns, 1)
    memcpy(&c.client, client, sizeof(sockaddr_storage))
    c.started = w.now
    c.last_active = w.now
    c.next = w.conns
    if w.conns != NULL:
        w.conns.prev = c
    w.conns = c
    return c


cdef void resume_listener(Worker* w, ListenSock* ls) noexcept nogil:
    cdef epoll_event ev
    ev.events = EPOLLIN
    ev.data.ptr = ls
    epoll_ctl(w.epfd, EPOLL_CTL_MOD, ls.fd, &ev)
    ls.paused = 0


cdef void conn_close(Worker* w, Conn* c, bint reset) noexcept nogil:
    cdef Listener* l = c.listener
    if c.closed:
        return
    c.closed = 1
    if reset:
        close_with_reset(c.cfd)
        if c.bfd >= 0:
            close_with_reset(c.bfd)
    else:
        close(c.cfd)
        if c.bfd >= 0:
            close(c.bfd)
    put_pipe(w, &c.up)
    put_pipe(w, &c.down)
    if c.ep != NULL:
        ep_release(c.ep)
        c.ep = NULL
    if c.prev != NULL:
        c.prev.next = c.next
    else:
        w.conns = c.next
    if c.next != NULL:
        c.next.prev = c.prev
    c.next_dead = w.dead
    w.dead = c
    w.counters[C_CLOSED] += 1
    lb_atomic_add(&l.conns, -1)
    listener_decref(l)


cdef int pump_half(Worker* w, Half* h, int src, int dst) noexcept nogil:
    """Move bytes from ``src`` to ``dst`` until one side would block; -1 on a socket error."""
    cdef ssize_t r
    while True:
        if h.piped > 0:
            r = splice(h.pipe_r, NULL, dst, NULL, <size_t>h.piped,
                       SPLICE_F_MOVE | SPLICE_F_NONBLOCK)
            if r > 0:
                h.piped -= <int>r
                continue
            return 0 if r < 0 and errno == EAGAIN else -1
        if h.len > 0:
            r = send(dst, h.buf + h.off, <size_t>h.len, MSG_NOSIGNAL | MSG_DONTWAIT)
            if r > 0:
                h.off += <int>r
                h.len -= <int>r
                if h.len == 0:
                    h.off = 0
                continue
            return 0 if r < 0 and errno == EAGAIN else -1
        if h.eof:
            if not h.shut:
                # half-close: pass the FIN on, the other direction keeps flowing
                shutdown(dst, SHUT_WR)
                h.shut = 1
            return 0
        if h.splicing:
            r = splice(src, NULL, h.pipe_w, NULL, <size_t>w.cfg.pipe_size,
                       SPLICE_F_MOVE | SPLICE_F_NONBLOCK)
            if r > 0:
                h.piped = <int>r
                continue
        else:
            r = recv(src, h.buf, <size_t>w.cfg.buffer_size, MSG_DONTWAIT)
            if r > 0:
                h.len = <int>r
                if w.cfg.splice_mode == 1 and r == w.cfg.buffer_size:
                    get_pipe(w, h)
                    if h.pipe_r >= 0:
                        h.splicing = 1
                        w.counters[C_SPLICED] += 1
                continue
        if r == 0:
            h.eof = 1
            continue
        return 0 if errno == EAGAIN else -1


cdef void pump(Worker* w, Conn* c) noexcept nogil:
    if pump_half(w, &c.up, c.cfd, c.bfd) < 0 or pump_half(w, &c.down, c.bfd, c.cfd) < 0:
        conn_close(w, c, True)
    elif c.up.shut and c.down.shut:
        conn_close(w, c, False)


cdef void conn_opened(Worker* w, Conn* c) noexcept nogil:
    c.state = ST_OPEN
    c.last_active = w.now
    if w.cfg.splice_mode == 2:
        get_pipe(w, &c.up)
        get_pipe(w, &c.down)
        c.up.splicing = c.up.pipe_r >= 0
        c.down.splicing = c.down.pipe_r >= 0
        w.counters[C_SPLICED] += c.up.splicing + c.down.splicing
    pump(w, c)


cdef bint backend_failed(Worker* w, Conn* c) noexcept nogil:
    """The backend refused or timed out: mark it down; True when another try is allowed."""
    w.counters[C_CONNECT_FAILED] += 1
    if c.bfd >= 0:
        close(c.bfd)
        c.bfd = -1
    if c.ep != NULL:
        mark_down(w, c.ep)
        if c.tries < 8:
            c.tried[c.tries] = c.ep
        c.tries += 1
        ep_release(c.ep)
        c.ep = NULL
    if c.tries > w.cfg.retries:
        w.counters[C_REJECTED] += 1
        conn_close(w, c, True)
        return False
    w.counters[C_RETRIED] += 1
    return True


cdef void connect_backend(Worker* w, Conn* c) noexcept nogil:
    """Connect to a picked endpoint, trying others when one refuses at once."""
    cdef Endpoint* ep
    cdef int fd, r
    cdef epoll_event ev
    while True:
        ep = svc_pick(c.listener.svc, &c.client, w.now, c.tried, c.tries if c.tries < 8 else 8)
        if ep == NULL:
            w.counters[C_REJECTED] += 1
            conn_close(w, c, True)
            return
        fd = socket(ep.addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)
        if fd < 0:
            ep_release(ep)
            w.counters[C_REJECTED] += 1
            conn_close(w, c, True)
            return
        set_nodelay(fd)
        c.bfd = fd
        c.ep = ep
        c.started = w.now
        c.state = ST_CONNECTING
        r = connect(fd, <sockaddr*>&ep.addr, ep.addrlen)
        if r == 0 or errno == EINPROGRESS:
            ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET
            ev.data.ptr = &c.bside
            epoll_ctl(w.epfd, EPOLL_CTL_ADD, fd, &ev)
            if r == 0:
                conn_opened(w, c)
            return
        if not backend_failed(w, c):
            return


cdef void on_conn_event(Worker* w, Side* side, uint32_t events) noexcept nogil:
    cdef Conn* c = side.conn
    cdef int err = 0
    cdef socklen_t len = sizeof(err)
    cdef sockaddr_storage peer
    cdef socklen_t plen = sizeof(peer)
    if c.closed:
        return
    if c.state == ST_CONNECTING:
        # client bytes wait in the kernel until the backend is there
        if side.kind != K_BACKEND:
            return
        getsockopt(c.bfd, SOL_SOCKET, SO_ERROR, &err, &len)
        if err != 0:
            if backend_failed(w, c):
                connect_backend(w, c)
        elif getpeername(c.bfd, <sockaddr*>&peer, &plen) == 0:
            # (an event left from a previous attempt's socket finds this one still connecting)
            conn_opened(w, c)
        return
    c.last_active = w.now
    pump(w, c)


cdef void on_accept(Worker* w, ListenSock* ls) noexcept nogil:
    cdef Listener* l = ls.listener
    cdef sockaddr_storage client
    cdef socklen_t alen
    cdef int fd, k
    cdef Conn* c
    cdef epoll_event ev
    for k in range(BATCH):
        if l.max_conns > 0 and lb_atomic_load(&l.conns) >= l.max_conns:
            # at the limit: stop accepting, new connections wait in the kernel's queue
            if not ls.paused and w.npaused < 64:
                ev.events = 0
                ev.data.ptr = ls
                epoll_ctl(w.epfd, EPOLL_CTL_MOD, ls.fd, &ev)
                ls.paused = 1
                lb_atomic_add(&l.refs, 1)
                w.paused[w.npaused] = ls
                w.npaused += 1
                w.counters[C_PAUSED] += 1
            return
        alen = sizeof(client)
        memset(&client, 0, sizeof(client))
        fd = accept4(ls.fd, <sockaddr*>&client, &alen, SOCK_NONBLOCK | SOCK_CLOEXEC)
        if fd < 0:
            return
        w.counters[C_ACCEPTED] += 1
        set_nodelay(fd)
        c = conn_new(w, fd, l, &client)
        if c == NULL:
            close_with_reset(fd)
            continue
        ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET
        ev.data.ptr = &c.cside
        epoll_ctl(w.epfd, EPOLL_CTL_ADD, fd, &ev)
        connect_backend(w, c)


# ---------------------------------------------------------------------------------------------
# UDP flows: one connected upstream socket per client, replies sent from the listener
# ---------------------------------------------------------------------------------------------

cdef inline uint64_t flow_hash(ListenSock* ls, sockaddr_storage* client,
                               socklen_t alen) noexcept nogil:
    return XXH3_64bits(client, alen) ^ hash_u64(<uint64_t><uintptr_t>ls)


cdef Flow* flow_find(Worker* w, uint64_t h, ListenSock* ls, sockaddr_storage* client,
                     socklen_t alen) noexcept nogil:
    cdef Flow* f = w.buckets[h & <uint64_t>(w.nbuckets - 1)]
    while f != NULL:
        if f.hash == h and f.lsock == ls and f.client_len == alen and \
                memcmp(&f.client, client, alen) == 0:
            return f
        f = f.bucket_next
    return NULL


cdef void flow_close(Worker* w, Flow* f) noexcept nogil:
    cdef Flow** slot
    if f.closed:
        return
    f.closed = 1
    close(f.fd)
    slot = &w.buckets[f.hash & <uint64_t>(w.nbuckets - 1)]
    while slot[0] != NULL and slot[0] != f:
        slot = &slot[0].bucket_next
    if slot[0] == f:
        slot[0] = f.bucket_next
    if f.prev != NULL:
        f.prev.next = f.next
    else:
        w.flows = f.next
    if f.next != NULL:
        f.next.prev = f.prev
    ep_release(f.ep)
    listener_decref(f.lsock.listener)
    f.next_dead = w.dead_flows
    w.dead_flows = f


cdef Flow* flow_new(Worker* w, ListenSock* ls, sockaddr_storage* client, socklen_t alen,
                    uint64_t h) noexcept nogil:
    cdef Endpoint* ep = svc_pick(ls.listener.svc, client, w.now, NULL, 0)
    cdef Flow* f
    cdef int fd
    cdef epoll_event ev
    cdef size_t b
    if ep == NULL:
        return NULL
    fd = socket(ep.addr.ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)
    if fd < 0:
        ep_release(ep)
        return NULL
    if connect(fd, <sockaddr*>&ep.addr, ep.addrlen) != 0:
        close(fd)
        ep_release(ep)
        return NULL
    f = <Flow*>calloc(1, sizeof(Flow))
    if f == NULL:
        close(fd)
        ep_release(ep)
        return NULL
    f.kind = K_FLOW
    f.fd = fd
    f.lsock = ls
    f.ep = ep
    memcpy(&f.client, client, alen)
    f.client_len = alen
    f.hash = h
    f.last_active = w.now
    lb_atomic_add(&ls.listener.refs, 1)
    b = h & <uint64_t>(w.nbuckets - 1)
    f.bucket_next = w.buckets[b]
    w.buckets[b] = f
    f.next = w.flows
    if w.flows != NULL:
        w.flows.prev = f
    w.flows = f
    ev.events = EPOLLIN
    ev.data.ptr = f
    epoll_ctl(w.epfd, EPOLL_CTL_ADD, fd, &ev)
    w.counters[C_UDP_FLOWS] += 1
    return f


cdef void on_udp_listener(Worker* w, ListenSock* ls) noexcept nogil:
    cdef sockaddr_storage client
    cdef socklen_t alen
    cdef ssize_t n, r
    cdef uint64_t h
    cdef Flow* f
    cdef int k, attempt
    for k in range(BATCH):
        alen = sizeof(client)
        memset(&client, 0, sizeof(client))
        n = recvfrom(ls.fd, w.dgram, DGRAM_MAX, MSG_DONTWAIT, <sockaddr*>&client, &alen)
        if n < 0:
            return
        w.counters[C_UDP_DATAGRAMS] += 1
        h = flow_hash(ls, &client, alen)
        f = flow_find(w, h, ls, &client, alen)
        if f != NULL and lb_atomic_load(&f.ep.removed):
            # never keep a client on an endpoint that is gone (kube-proxy's stale conntrack)
            w.counters[C_UDP_DROPPED_FLOWS] += 1
            flow_close(w, f)
            f = NULL
        for attempt in range(2):
            if f == NULL:
                f = flow_new(w, ls, &client, alen, h)
                if f == NULL:
                    break
            f.last_active = w.now
            r = send(f.fd, w.dgram, <size_t>n, MSG_DONTWAIT)
            if r >= 0 or errno != ECONNREFUSED:
                break
            # an ICMP port unreachable came back on this flow: the endpoint is not listening
            mark_down(w, f.ep)
            flow_close(w, f)
            f = NULL


cdef void on_flow(Worker* w, Flow* f) noexcept nogil:
    cdef ssize_t n
    cdef int k
    if f.closed:
        return
    for k in range(BATCH):
        n = recv(f.fd, w.dgram, DGRAM_MAX, MSG_DONTWAIT)
        if n < 0:
            if errno == ECONNREFUSED:
                mark_down(w, f.ep)
                flow_close(w, f)
            return
        f.last_active = w.now
        sendto(f.lsock.fd, w.dgram, <size_t>n, MSG_DONTWAIT, <sockaddr*>&f.client,
               f.client_len)


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------

cdef void run_command(Worker* w, Command* cmd) noexcept nogil:
    cdef epoll_event ev
    cdef ListenSock* ls = cmd.ls
    cdef Flow* f
    cdef Flow* nxt
    cdef int i
    if cmd.op == CMD_ADD:
        ev.events = EPOLLIN
        ev.data.ptr = ls
        epoll_ctl(w.epfd, EPOLL_CTL_ADD, ls.fd, &ev)
        return
    # CMD_DEL: forget the socket, close it and every UDP flow it answers for
    if ls.paused:
        for i in range(w.npaused):
            if w.paused[i] == ls:
                w.npaused -= 1
                w.paused[i] = w.paused[w.npaused]
                listener_decref(ls.listener)
                break
        ls.paused = 0
    if ls.kind == K_LISTEN_UDP:
        f = w.flows
        while f != NULL:
            nxt = f.next
            if f.lsock == ls:
                flow_close(w, f)
            f = nxt
    close(ls.fd)
    ls.fd = -1
    listener_decref(ls.listener)


cdef void run_commands(Worker* w) noexcept nogil:
    cdef uint64_t value
    cdef Command* cmd
    cdef Command* nxt
    read(w.wakefd, &value, 8)
    pthread_mutex_lock(&w.qlock)
    cmd = w.queue
    w.queue = NULL
    pthread_mutex_unlock(&w.qlock)
    while cmd != NULL:
        nxt = cmd.next
        run_command(w, cmd)
        lb_atomic_store(&cmd.done, 1)
        cmd = nxt


cdef void tick(Worker* w) noexcept nogil:
    """Timeouts: connect, idle, UDP flows; drop flows of removed endpoints; resume listeners."""
    cdef Conn* c = w.conns
    cdef Conn* cn
    cdef Flow* f = w.flows
    cdef Flow* fn
    cdef ListenSock* ls
    cdef int i = 0
    cdef Config* cfg = w.cfg
    while c != NULL:
        cn = c.next
        if c.state == ST_CONNECTING:
            if w.now - c.started > cfg.connect_timeout:
                if backend_failed(w, c):
                    connect_backend(w, c)
        elif cfg.idle_timeout > 0 and w.now - c.last_active > cfg.idle_timeout:
            w.counters[C_IDLE_CLOSED] += 1
            conn_close(w, c, False)
        c = cn
    while f != NULL:
        fn = f.next
        if lb_atomic_load(&f.ep.removed):
            w.counters[C_UDP_DROPPED_FLOWS] += 1
            flow_close(w, f)
        elif cfg.udp_idle_timeout > 0 and w.now - f.last_active > cfg.udp_idle_timeout:
            flow_close(w, f)
        f = fn
    while i < w.npaused:
        ls = w.paused[i]
        if lb_atomic_load(&ls.listener.conns) < ls.listener.max_conns:
            resume_listener(w, ls)
            w.npaused -= 1
            w.paused[i] = w.paused[w.npaused]
            listener_decref(ls.listener)
        else:
            i += 1


cdef void free_dead(Worker* w) noexcept nogil:
    cdef Conn* c
    cdef Flow* f
    while w.dead != NULL:
        c = w.dead
        w.dead = c.next_dead
        free(c.up.buf)
        free(c)
    while w.dead_flows != NULL:
        f = w.dead_flows
        w.dead_flows = f.next_dead
        free(f)


cdef void worker_loop(Worker* w) noexcept nogil:
    cdef epoll_event events[256]
    cdef int n, i, kind
    cdef void* p
    while not lb_atomic_load(&w.stop):
        n = epoll_wait(w.epfd, events, 256, 50)
        w.now = mono()
        for i in range(n):
            p = events[i].data.ptr
            kind = (<int*>p)[0]
            if kind == K_CLIENT or kind == K_BACKEND:
                on_conn_event(w, <Side*>p, events[i].events)
            elif kind == K_LISTEN_TCP:
                on_accept(w, <ListenSock*>p)
            elif kind == K_LISTEN_UDP:
                on_udp_listener(w, <ListenSock*>p)
            elif kind == K_FLOW:
                on_flow(w, <Flow*>p)
            elif kind == K_WAKE:
                run_commands(w)
        # closed this round: freed only now, another event of the batch may point at them
        free_dead(w)
        if w.now >= w.next_tick:
            tick(w)
            free_dead(w)
            w.next_tick = w.now + 0.1
        lb_atomic_add(&w.epoch, 1)


cdef void worker_shutdown(Worker* w) noexcept nogil:
    """After the loop has ended: close everything the worker owns."""
    cdef int i
    w.now = mono()
    run_commands(w)
    while w.conns != NULL:
        conn_close(w, w.conns, False)
    while w.flows != NULL:
        flow_close(w, w.flows)
    for i in range(w.npaused):
        listener_decref(w.paused[i].listener)
    w.npaused = 0
    free_dead(w)
    for i in range(2 * w.npipes):
        close(w.pipe_pool[i])
    w.npipes = 0


# ---------------------------------------------------------------------------------------------
# Python face
# ---------------------------------------------------------------------------------------------

cdef int parse_address(str ip, int port, sockaddr_storage* out, socklen_t* outlen) except -1:
    """Fill a zeroed sockaddr for ``ip``:``port``; ConfigError naming the value if invalid."""
    cdef bytes raw
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        raise ConfigError(f"endpoint ip: {ip!r} is not an IP address") from None
    if not 0 < port < 65536:
        raise ConfigError(f"endpoint port: {port!r} is not in 1..65535")
    memset(out, 0, sizeof(sockaddr_storage))
    raw = addr.packed
    if addr.version == 4:
        (<sockaddr_in*>out).sin_family = AF_INET
        (<sockaddr_in*>out).sin_port = htons(<unsigned short>port)
        memcpy(&(<sockaddr_in*>out).sin_addr, <char*>raw, 4)
        outlen[0] = sizeof(sockaddr_in)
    else:
        (<sockaddr_in6*>out).sin6_family = AF_INET6
        (<sockaddr_in6*>out).sin6_port = htons(<unsigned short>port)
        memcpy(&(<sockaddr_in6*>out).sin6_addr, <char*>raw, 16)
        outlen[0] = sizeof(sockaddr_in6)
    return 0


cdef str format_address(Endpoint* ep):
    cdef sockaddr_in* a4
    cdef sockaddr_in6* a6
    if ep.addr.ss_family == AF_INET:
        a4 = <sockaddr_in*>&ep.addr
        return f"{ipaddress.IPv4Address((<char*>&a4.sin_addr)[:4])}:{ntohs(a4.sin_port)}"
    a6 = <sockaddr_in6*>&ep.addr
    return f"[{ipaddress.IPv6Address((<char*>&a6.sin6_addr)[:16])}]:{ntohs(a6.sin6_port)}"


cdef class Engine:
    """A pool of worker threads, each an epoll loop relaying TCP connections and UDP flows.

    :param workers: number of worker threads (event loops).
    :param buffer_size: bytes of user-space buffer per direction of a connection.
    :param splice: ``"auto"`` (buffers, then ``splice`` once a direction fills its buffer),
        ``"always"`` or ``"never"``.
    :param pipe_size: capacity asked for each splice pipe (``F_SETPIPE_SZ``).
    :param connect_timeout: seconds to wait for a backend's handshake before trying another.
    :param idle_timeout: seconds without traffic after which a TCP connection is closed
        (0: never).
    :param udp_idle_timeout: seconds without traffic after which a UDP flow is forgotten.
    :param retries: how many other endpoints a new connection tries after a refusal/timeout.
    :param down_time: seconds an endpoint that refused or timed out is not picked.
    """

    cdef Worker* ws
    cdef int nworkers
    cdef Config cfg
    cdef object threads
    cdef dict services
    cdef dict listeners
    cdef int next_listener
    cdef bint is_running
    cdef object lock

    def __cinit__(self, int workers=2, int buffer_size=16384, str splice="auto",
                  int pipe_size=262144, double connect_timeout=2.0, double idle_timeout=3600.0,
                  double udp_idle_timeout=30.0, int retries=2, double down_time=5.0):
        cdef int i
        if not 1 <= workers <= MAX_WORKERS:
            raise ConfigError(f"workers: {workers!r} is not in 1..{MAX_WORKERS}")
        if buffer_size < 1024:
            raise ConfigError(f"buffer_size: {buffer_size!r} is below 1024")
        if splice not in SPLICE_MODES:
            raise ConfigError(f"splice: {splice!r} is not one of {', '.join(SPLICE_MODES)}")
        if connect_timeout <= 0:
            raise ConfigError(f"connect_timeout: {connect_timeout!r} must be positive")
        if retries < 0:
            raise ConfigError(f"retries: {retries!r} must not be negative")
        self.cfg.buffer_size = buffer_size
        self.cfg.splice_mode = SPLICE_MODES[splice]
        self.cfg.pipe_size = pipe_size
        self.cfg.retries = retries
        self.cfg.connect_timeout = connect_timeout
        self.cfg.idle_timeout = idle_timeout
        self.cfg.udp_idle_timeout = udp_idle_timeout
        self.cfg.down_time = down_time
        self.nworkers = workers
        self.ws = <Worker*>calloc(workers, sizeof(Worker))
        if self.ws == NULL:
            raise MemoryError()
        for i in range(workers):
            self.ws[i].epfd = -1
            self.ws[i].wakefd = -1
        self.threads = []
        self.services = {}
        self.listeners = {}
        self.next_listener = 1
        self.is_running = False
        self.lock = threading.Lock()

    def __dealloc__(self):
        cdef int i
        if self.ws == NULL:
            return
        if not self.is_running:
            for i in range(self.nworkers):
                self._free_worker(&self.ws[i])
            free(self.ws)
        # a running engine cannot be collected: its threads hold a reference to it
        self.ws = NULL

    @property
    def workers(self) -> int:
        """Number of worker threads."""
        return self.nworkers

    @property
    def running(self) -> bool:
        """True between ``start()`` and ``stop()``."""
        return self.is_running

    cdef int _ensure_workers(self) except -1:
        cdef int i
        if self.ws[0].epfd < 0:
            for i in range(self.nworkers):
                self._init_worker(&self.ws[i], i)
        return 0

    cdef int _init_worker(self, Worker* w, int i) except -1:
        cdef epoll_event ev
        w.kind = K_WAKE
        w.id = i
        w.cfg = &self.cfg
        w.stop = 0
        w.nbuckets = 4096
        w.buckets = <Flow**>calloc(w.nbuckets, sizeof(Flow*))
        w.dgram = <char*>malloc(DGRAM_MAX)
        w.epfd = epoll_create1(EPOLL_CLOEXEC)
        w.wakefd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)
        if w.buckets == NULL or w.dgram == NULL or w.epfd < 0 or w.wakefd < 0:
            raise OSError(errno, "cannot set up a worker's event loop")
        pthread_mutex_init(&w.qlock, NULL)
        ev.events = EPOLLIN
        ev.data.ptr = w
        epoll_ctl(w.epfd, EPOLL_CTL_ADD, w.wakefd, &ev)
        w.now = mono()
        w.next_tick = w.now + 0.1
        return 0

    cdef void _free_worker(self, Worker* w) noexcept:
        if w.epfd >= 0:
            close(w.epfd)
            w.epfd = -1
        if w.wakefd >= 0:
            close(w.wakefd)
            w.wakefd = -1
            pthread_mutex_destroy(&w.qlock)
        free(w.buckets)
        w.buckets = NULL
        free(w.dgram)
        w.dgram = NULL

    def start(self) -> None:
        """Start the worker threads. Listeners added before are served from now on."""
        cdef int i
        with self.lock:
            if self.is_running:
                return
            self._ensure_workers()
            self.is_running = True
            for i in range(self.nworkers):
                t = threading.Thread(target=self._run, args=(i,), name=f"lbcore-proxy-{i}",
                                     daemon=True)
                t.start()
                self.threads.append(t)

    def _run(self, int index) -> None:
        cdef Worker* w = &self.ws[index]
        with nogil:
            worker_loop(w)

    def stop(self) -> None:
        """Stop the workers, close every connection, flow and listener, and free them."""
        cdef int i
        cdef uint64_t one = 1
        with self.lock:
            if self.ws == NULL or self.ws[0].epfd < 0:
                self._drop_all()
                return
            for i in range(self.nworkers):
                lb_atomic_store(&self.ws[i].stop, 1)
                write(self.ws[i].wakefd, &one, 8)
            for t in self.threads:
                t.join(timeout=10)
            if any(t.is_alive() for t in self.threads):
                raise RuntimeError("a proxy worker did not stop within 10 s")
            self.threads = []
            self.is_running = False
            for ident in list(self.listeners):
                self._remove_listener(ident)
            for i in range(self.nworkers):
                worker_shutdown(&self.ws[i])
                self._free_worker(&self.ws[i])
            self._drop_all()

    cdef void _drop_all(self):
        cdef uintptr_t p
        for ident in list(self.listeners):
            self._remove_listener(ident)
        for key, p in list(self.services.items()):
            svc_decref(<Service*>p)
        self.services.clear()

    # -- services ------------------------------------------------------------------------

    def set_service(self, str key, list endpoints, str algorithm="round_robin",
                    double affinity_timeout=0.0) -> None:
        """Create or update the endpoint table of service port ``key``.

        :param endpoints: ``(ip, port, weight, pickable)`` tuples; an endpoint that is not
            pickable (terminating) gets no new connection but keeps its UDP flows; an
            endpoint missing from the list is removed: its UDP flows are dropped, its TCP
            connections are left to finish.
        :param algorithm: one of :data:`ALGORITHMS`.
        :param affinity_timeout: seconds of ClientIP affinity, 0 for none.
        """
        cdef Service* s
        cdef uintptr_t p
        cdef int n = len(endpoints), i, j
        cdef Endpoint** eps
        cdef Endpoint** old
        cdef int nold
        cdef Endpoint* ep
        cdef sockaddr_storage addr
        cdef socklen_t alen
        cdef bint removed_any = False
        cdef int alg
        if algorithm not in ALGORITHMS:
            raise ConfigError(
                f"algorithm: {algorithm!r} is not one of {', '.join(sorted(ALGORITHMS))}")
        alg = ALGORITHMS[algorithm]
        parsed = []
        for item in endpoints:
            ip, port, weight, pickable = item
            parse_address(ip, int(port), &addr, &alen)
            if int(weight) < 0:
                raise ConfigError(f"endpoint weight: {weight!r} of {ip} must not be negative")
            parsed.append((ip, int(port), int(weight), bool(pickable)))
        with self.lock:
            p = self.services.get(key, 0)
            if p == 0:
                s = <Service*>calloc(1, sizeof(Service))
                if s == NULL:
                    raise MemoryError()
                pthread_mutex_init(&s.lock, NULL)
                s.refs = 1
                s.rand = hash_u64(<uint64_t><uintptr_t>s) | 1
                self.services[key] = <uintptr_t>s
            else:
                s = <Service*>p
            eps = <Endpoint**>calloc(n if n > 0 else 1, sizeof(Endpoint*))
            if eps == NULL:
                raise MemoryError()
            for i, (ip, port, weight, pickable) in enumerate(parsed):
                parse_address(ip, port, &addr, &alen)
                ep = NULL
                for j in range(s.neps):
                    if s.eps[j] != NULL and s.eps[j].addrlen == alen and \
                            memcmp(&s.eps[j].addr, &addr, alen) == 0:
                        ep = s.eps[j]
                        s.eps[j] = NULL  # moved into the new table
                        break
                if ep == NULL:
                    ep = <Endpoint*>calloc(1, sizeof(Endpoint))
                    if ep == NULL:
                        raise MemoryError()
                    memcpy(&ep.addr, &addr, sizeof(addr))
                    ep.addrlen = alen
                    ep.refs = 1
                    ep.id_hash = XXH3_64bits(&addr, alen)
                ep.weight = weight
                ep.pickable = pickable
                eps[i] = ep
            with nogil:
                pthread_mutex_lock(&s.lock)
                old = s.eps
                nold = s.neps
                s.eps = eps
                s.neps = n
                s.algorithm = alg
                for i in range(nold):
                    if old[i] != NULL:
                        lb_atomic_store(&old[i].removed, 1)
                        removed_any = True
                if removed_any or affinity_timeout != s.affinity_timeout:
                    aff_rebuild(s, mono(), 0)
                s.affinity_timeout = affinity_timeout
                pthread_mutex_unlock(&s.lock)
                for i in range(nold):
                    if old[i] != NULL:
                        ep_decref(old[i])
                free(old)

    def remove_service(self, str key) -> None:
        """Forget service port ``key`` (its listeners must be removed first)."""
        cdef uintptr_t p
        with self.lock:
            p = self.services.pop(key, 0)
        if p != 0:
            svc_decref(<Service*>p)

    def service_endpoints(self, str key) -> list:
        """``[{"address", "active", "pickable", "down"}]`` for service port ``key``."""
        cdef uintptr_t p
        cdef Service* s
        cdef int i
        cdef double now = mono()
        out = []
        with self.lock:
            p = self.services.get(key, 0)
            if p == 0:
                return out
            s = <Service*>p
            pthread_mutex_lock(&s.lock)
            try:
                for i in range(s.neps):
                    out.append({
                        "address": format_address(s.eps[i]),
                        "active": lb_atomic_load(&s.eps[i].active),
                        "pickable": bool(s.eps[i].pickable),
                        "down": s.eps[i].down_until > now,
                    })
            finally:
                pthread_mutex_unlock(&s.lock)
        return out

    # -- listeners -----------------------------------------------------------------------

    def add_listener(self, str key, str protocol, list fds, int max_connections=0) -> int:
        """Serve bound sockets for service port ``key``; the engine owns ``fds`` from now on.

        :param protocol: ``"TCP"`` (``fds`` holds one listening socket per worker, bound with
            ``SO_REUSEPORT``) or ``"UDP"`` (one bound datagram socket).
        :param max_connections: TCP connections open at once through this listener; at the
            limit, new ones wait in the kernel's accept queue. 0: no limit.
        :return: an id for :meth:`remove_listener`.
        """
        cdef uintptr_t p
        cdef Listener* l
        cdef int i, kind, ident
        if protocol == "TCP":
            kind = K_LISTEN_TCP
            if len(fds) != self.nworkers:
                raise ConfigError(f"fds: a TCP listener needs {self.nworkers} sockets, "
                                  f"got {len(fds)}")
        elif protocol == "UDP":
            kind = K_LISTEN_UDP
            if len(fds) != 1:
                raise ConfigError(f"fds: a UDP listener needs 1 socket, got {len(fds)}")
        else:
            raise ConfigError(f"protocol: {protocol!r} is not TCP or UDP")
        with self.lock:
            p = self.services.get(key, 0)
            if p == 0:
                raise ConfigError(f"service port: {key!r} has no endpoint table")
            l = <Listener*>calloc(1, sizeof(Listener))
            if l == NULL:
                raise MemoryError()
            l.svc = <Service*>p
            lb_atomic_add(&l.svc.refs, 1)
            l.max_conns = max_connections
            l.refs = 1 + len(fds)
            l.nsocks = len(fds)
            ident = self.next_listener
            self.next_listener += 1
            for i, fd in enumerate(fds):
                l.socks[i].kind = kind
                l.socks[i].fd = fd
                l.socks[i].listener = l
                # a UDP socket goes to one worker, spread over them by listener id
                l.socks[i].worker = i if kind == K_LISTEN_TCP else ident % self.nworkers
            self.listeners[ident] = <uintptr_t>l
            self._ensure_workers()
            for i in range(l.nsocks):
                self._command(CMD_ADD, &l.socks[i])
        return ident

    def remove_listener(self, int ident) -> None:
        """Close listener ``ident``; its established connections are left to finish."""
        with self.lock:
            self._remove_listener(ident)

    cdef void _remove_listener(self, int ident):
        cdef uintptr_t p = self.listeners.pop(ident, 0)
        cdef Listener* l
        cdef int i
        if p == 0:
            return
        l = <Listener*>p
        for i in range(l.nsocks):
            self._command(CMD_DEL, &l.socks[i])
        listener_decref(l)

    cdef void _command(self, int op, ListenSock* ls):
        """Run a listener change on the worker that owns the socket, and wait for it."""
        cdef Worker* w = &self.ws[ls.worker]
        cdef Command* cmd
        cdef uint64_t one = 1
        cdef int waited = 0
        cdef epoll_event ev
        if not self.is_running:
            # no loop runs: apply it here, nothing else can hold the socket
            if op == CMD_DEL:
                if w.epfd >= 0 and ls.fd >= 0:
                    epoll_ctl(w.epfd, EPOLL_CTL_DEL, ls.fd, NULL)
                if ls.fd >= 0:
                    close(ls.fd)
                ls.fd = -1
                listener_decref(ls.listener)
            else:
                ev.events = EPOLLIN
                ev.data.ptr = ls
                epoll_ctl(w.epfd, EPOLL_CTL_ADD, ls.fd, &ev)
            return
        cmd = <Command*>calloc(1, sizeof(Command))
        cmd.op = op
        cmd.ls = ls
        with nogil:
            pthread_mutex_lock(&w.qlock)
            cmd.next = w.queue
            w.queue = cmd
            pthread_mutex_unlock(&w.qlock)
            write(w.wakefd, &one, 8)
            while not lb_atomic_load(&cmd.done) and waited < 100000:
                usleep(100)
                waited += 1
        if lb_atomic_load(&cmd.done):
            free(cmd)
        # else: a stuck worker still owns the command; leaking it is safer than freeing it

    def stats(self) -> dict:
        """Counters summed over the workers, plus open ``connections`` and UDP ``flows``."""
        cdef int i, k
        cdef uintptr_t p
        out = {name: 0 for name in COUNTERS}
        for i in range(self.nworkers):
            for k in range(N_COUNTERS):
                out[COUNTERS[k]] += lb_atomic_load_u64(&self.ws[i].counters[k])
        conns = 0
        with self.lock:
            for p in self.listeners.values():
                conns += lb_atomic_load(&(<Listener*>p).conns)
        out["connections"] = conns
        out["listeners"] = len(self.listeners)
        out["services"] = len(self.services)
        return out
