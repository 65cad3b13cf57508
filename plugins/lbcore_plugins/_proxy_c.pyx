# cython: language_level=3, embedsignature=True
"""The socket frontends' data path: a TCP/UDP proxy over epoll, run without the GIL.

One event loop per worker thread. TCP listeners are bound once per worker with ``SO_REUSEPORT``
so the kernel spreads new connections over the workers; a UDP listener belongs to one worker,
which keeps every flow of a client on one thread.

Picks call the pick policy ``lbcore.Picker`` calls (``lbcore.core._policy_c.pick_new``: ClientIP
affinity, then the balancer, skipping endpoints marked down or already tried), without the GIL,
over the service's ``lbcore.balancers`` Balancer (any algorithm ``lbcore.balancers.available()``
lists; hashed ones key by the client IP, the policy's default) and, for ClientIP session
affinity, an ``lbcore.AffinityTable``. Both are shared by the workers under the service's lock,
which also keeps the live-connection counts of least_conn and bounded_load exact. A sync never changes a Balancer in place: it builds
a new one and swaps it in under that lock, so no worker is ever inside a Balancer being rebuilt.

Bytes are relayed through a user-space buffer; a direction that fills the buffer in one read
is a bulk transfer and switches to ``splice(2)`` through a pipe (zero copy), as HAProxy does
with ``splice-auto``. Sockets, pipes and structures are owned by the worker that uses them;
the Python thread changes listeners only through a command queue the workers drain, so no
file descriptor is closed under a running loop.
"""

cimport cython
from libc.stdint cimport int32_t, uint32_t, uint64_t, uintptr_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcmp, memcpy, memset
from libc.errno cimport errno, EAGAIN, EINPROGRESS, ECONNREFUSED, EMFILE, ENFILE, ENOBUFS, ENOMEM
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC
from posix.unistd cimport close, read, write, usleep

from lbcore.core._balancers_c cimport Balancer
from lbcore.core._conntrack_c cimport CT_KEY_BYTES, AffinityTable, ct_hash, ct_key, pack_addr, pack_port, pack_proto
from lbcore.core._hashing_c cimport XXH3_64bits, hash_u64
from lbcore.core._policy_c cimport PickSet, client_ip_hash, pick_new

# declarations (epoll, sockets, splice) and the data path's structures; included rather than a
# same-named .pxd because the extension's package name (lbcore_plugins) is not its directory
include "_proxy_c.pxi"

import ipaddress
import socket as pysocket
import threading

from lbcore import ConfigError, balancers


cdef object _MISSING = object()  # what dict.get gives for a missing key (None is a value)
_POSITIONS = []  # b"0", b"1", ...: backend names by position, shared by every balancer


cdef list position_names(Py_ssize_t n):
    """The first ``n`` names by position (made once, then shared)."""
    while len(_POSITIONS) < n:
        _POSITIONS.append(str(len(_POSITIONS)).encode())
    return _POSITIONS[:n]

SPLICE_MODES = {"never": 0, "auto": 1, "always": 2}
COUNTERS = (
    "accepted", "closed", "connect_failed", "retried", "rejected", "idle_closed", "spliced",
    "udp_flows", "udp_dropped_flows", "udp_datagrams", "paused", "fd_exhausted", "udp_evicted_flows",
    "server_timeouts", "ejected",
)

# seconds a listener rests after accept failed for want of descriptors or memory
cdef double FD_PAUSE = 0.1

cdef enum:
    DGRAM_MAX = 65536
    BATCH = 64
    SPARE_CONNS = 64     # closed connections (with their buffers) a worker keeps for reuse

# read readiness of a socket (Conn.cready / Conn.bready), from its last events: nothing known to
# read; bytes; bytes then the peer's FIN (a short read reached the FIN); an error or hang-up
# (read until recv says what it is)
cdef enum:
    DRAINED = 0
    READABLE = 1
    PEER_DONE = 2
    ENDING = 3

# an AffinityTable moves its millisecond clock forward past this (see lbcore/core/_conntrack_c.pyx)
cdef double AFFINITY_REBASE_MS = 3221225472.0


cdef inline double mono() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <double>ts.tv_sec + <double>ts.tv_nsec * 1e-9


cdef inline void set_nodelay(int fd) noexcept nogil:
    cdef int one = 1
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one))


cdef inline void delay_handshake_ack(int fd) noexcept nogil:
    """Before connect(): the handshake's last ACK waits to leave with the first bytes sent
    (HAProxy's tcp-smart-connect). Only for a client that has sent already: with a protocol
    where the server speaks first, the server would wait for the delayed ACK."""
    cdef int zero = 0
    setsockopt(fd, IPPROTO_TCP, TCP_QUICKACK, &zero, sizeof(zero))


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


cdef void ep_release(Service* s, Endpoint* ep) noexcept nogil:
    """Give back what a pick took: one live connection (in the balancer too) and one reference."""
    pthread_mutex_lock(&s.lock)
    if ep.slot >= 0 and s.balancer != NULL:
        (<Balancer>s.balancer).release_c(ep.slot)
    lb_atomic_add(&ep.active, -1)
    pthread_mutex_unlock(&s.lock)
    ep_decref(ep)


cdef void svc_decref(Service* s) noexcept nogil:
    """Free a service once nothing holds it; the Engine has detached its balancer and table."""
    cdef int i
    if lb_atomic_add(&s.refs, -1) != 0:
        return
    for i in range(s.neps):
        lb_atomic_store(&s.eps[i].removed, 1)
        ep_decref(s.eps[i])
    free(s.eps)
    free(s.picks)
    free(s.by_ident)
    free(s.bal_ids)
    free(s.bidx)
    free(s.down)
    pthread_mutex_destroy(&s.lock)
    free(s)


cdef void listener_decref(Listener* l) noexcept nogil:
    if lb_atomic_add(&l.refs, -1) == 0:
        if l.svc != NULL:
            svc_decref(l.svc)
        http_listen_free(l.http)
        free(l)


cdef inline void client_key(sockaddr_storage* a, ct_key* k) noexcept nogil:
    """The affinity table's key of a client: its IP as 16 bytes, IPv4 as ::ffff:a.b.c.d."""
    memset(k, 0, sizeof(ct_key))
    if a.ss_family == AF_INET6:
        memcpy(k.addr, &(<sockaddr_in6*>a).sin6_addr, 16)
    else:
        k.addr[10] = 0xFF
        k.addr[11] = 0xFF
        memcpy(k.addr + 12, &(<sockaddr_in*>a).sin_addr, 4)


# -- picking ----------------------------------------------------------------------------------

cdef void rebase_affinity(Service* s, double now) noexcept nogil:
    """Move the affinity table's millisecond clock forward (once in about 37 days of its life).

    That is the table's own ``now_ms``, which needs the GIL; the lock is taken after the GIL,
    and no thread ever asks for the GIL while it holds a service's lock, so this cannot deadlock.
    """
    with gil:
        pthread_mutex_lock(&s.lock)
        try:
            if s.affinity != NULL and (now - s.affinity_epoch) * 1000.0 >= AFFINITY_REBASE_MS:
                (<AffinityTable>s.affinity).now_ms(now)
                s.affinity_epoch = (<AffinityTable>s.affinity).epoch
        except Exception:
            pass
        finally:
            pthread_mutex_unlock(&s.lock)


cdef uint64_t five_tuple_hash(const ct_key* side, ct_key* client,
                               sockaddr_storage* a) noexcept nogil:
    """The balancer key of ``hash_key: five_tuple``: the bytes ``lbcore.Picker`` hashes for the
    same connection (its ``ct_key``: client and service address, ports, protocol)."""
    cdef ct_key k = side[0]  # the service's side, filled once by add_listener
    memcpy(k.addr, client.addr, 16)
    if a.ss_family == AF_INET6:
        k.sport = ntohs((<sockaddr_in6*>a).sin6_port)
    else:
        k.sport = ntohs((<sockaddr_in*>a).sin_port)
    return XXH3_64bits(&k, CT_KEY_BYTES)


cdef inline Endpoint* svc_pick(Listener* l, sockaddr_storage* client, double now,
                               Endpoint** tried, int ntried) noexcept nogil:
    return service_pick(l.svc, &l.conn, client, now, tried, ntried)


cdef Endpoint* service_pick(Service* s, const ct_key* side, sockaddr_storage* client,
                            double now, Endpoint** tried, int ntried) noexcept nogil:
    """Pick an endpoint of ``s`` for a new connection, flow or HTTP request with the shared pick
    policy (affinity, then the balancer; ``tried`` ones excluded); ``side`` is the listener's
    half of the 5-tuple. The caller owns one reference and one live connection of the result
    (``ep_release``)."""
    cdef Endpoint* ep = NULL
    cdef ct_key key
    cdef uint64_t h
    cdef uint64_t kh = 0
    cdef uint32_t ms = 0
    cdef int32_t ident
    cdef int32_t excl[8]
    cdef int i, nexcl = 0
    cdef double d
    cdef PickSet ps
    client_key(client, &key)
    pthread_mutex_lock(&s.lock)
    if s.affinity != NULL:
        if (now - s.affinity_epoch) * 1000.0 >= AFFINITY_REBASE_MS:
            pthread_mutex_unlock(&s.lock)
            rebase_affinity(s, now)
            pthread_mutex_lock(&s.lock)
    if s.affinity != NULL:
        d = (now - s.affinity_epoch) * 1000.0
        ms = <uint32_t>d if d > 0 else 0
        kh = ct_hash(&key, (<AffinityTable>s.affinity).seed)
    for i in range(ntried if ntried < 8 else 8):
        # an id names the same endpoint only while that endpoint stays in the service
        if 0 <= tried[i].ident < s.nidents and s.by_ident[tried[i].ident] == tried[i]:
            excl[nexcl] = tried[i].ident
            nexcl += 1
    ps.balancer, ps.affinity = s.balancer, s.affinity
    ps.bal_ids, ps.nbal, ps.bidx, ps.down, ps.nids = s.bal_ids, s.npicks, s.bidx, s.down, s.nidents
    h = five_tuple_hash(side, &key, client) if s.five_tuple else client_ip_hash(&key)
    ident = pick_new(&ps, &key, kh, ms, h, excl, nexcl, now)
    if ident >= 0:
        ep = s.by_ident[ident]
        (<Balancer>s.balancer).acquire_c(ep.slot)
        lb_atomic_add(&ep.active, 1)
        ep_incref(ep)
    pthread_mutex_unlock(&s.lock)
    return ep


cdef void mark_down(Worker* w, Service* s, Endpoint* ep) noexcept nogil:
    """No new connection for ``ep`` for the configured down time. The endpoint keeps the mark
    (a sync carries it into the next endpoint set); the service's array is what picks read."""
    ep.down_until = w.now + w.cfg.down_time
    pthread_mutex_lock(&s.lock)
    if 0 <= ep.ident < s.nidents and s.by_ident[ep.ident] == ep:
        s.down[ep.ident] = ep.down_until
    pthread_mutex_unlock(&s.lock)


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


cdef Conn* conn_new(Worker* w, int cfd, Listener* l, sockaddr_storage* client,
                    socklen_t alen) noexcept nogil:
    cdef Conn* c
    cdef char* buf
    if w.spare != NULL:
        # a closed connection's memory and buffers, reused: no allocation per connection
        c = w.spare
        w.spare = c.next_dead
        w.nspare -= 1
        buf = c.up.buf
        memset(c, 0, sizeof(Conn))
    else:
        c = <Conn*>calloc(1, sizeof(Conn))
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
    lb_atomic_add(&w.cfg.conns, 1)
    memcpy(&c.client, client, alen)
    c.started = w.now
    c.last_active = w.now
    c.next = w.conns
    if w.conns != NULL:
        w.conns.prev = c
    w.conns = c
    return c


cdef void watch_listener(Worker* w, ListenSock* ls) noexcept nogil:
    """Add a listening socket to the worker's epoll set.

    A TCP socket shared by the workers (one file, a ``dup`` per worker) wakes one idle worker
    per connection (``EPOLLEXCLUSIVE``), not all of them; with a socket per worker
    (``SO_REUSEPORT``) the flag changes nothing. Such a registration cannot be modified, so a
    paused listener is removed and added again.
    """
    cdef epoll_event ev
    ev.events = EPOLLIN | (EPOLLEXCLUSIVE if ls.kind != K_LISTEN_UDP else 0)
    ev.data.ptr = ls
    epoll_ctl(w.epfd, EPOLL_CTL_ADD, ls.fd, &ev)


cdef void resume_listener(Worker* w, ListenSock* ls) noexcept nogil:
    watch_listener(w, ls)
    ls.paused = 0
    ls.resume_at = 0.0


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
        ep_release(l.svc, c.ep)
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
    lb_atomic_add(&w.cfg.conns, -1)
    listener_decref(l)


cdef int pump_half(Worker* w, Half* h, int src, int dst, int* ready,
                   Half* other) noexcept nogil:
    """Move bytes from ``src`` to ``dst`` until one side would block: 1 when ``dst`` would
    block, 0 when ``src`` is drained or has ended, -1 on a socket error.

    ``ready`` is what the last events said of ``src``. A short ``recv`` empties the socket, so
    ``src`` is not read again before its next event (with edge-triggered epoll, bytes arriving
    later bring one); when the event also said the peer had sent its FIN (PEER_DONE), that short
    read reached it: the end of stream is known without one more ``recv``.
    """
    cdef ssize_t r
    while True:
        if h.piped > 0:
            r = splice(h.pipe_r, NULL, dst, NULL, <size_t>h.piped,
                       SPLICE_F_MOVE | SPLICE_F_NONBLOCK)
            if r > 0:
                h.piped -= <int>r
                h.sent += <unsigned long long>r
                continue
            return 1 if r < 0 and errno == EAGAIN else -1
        if h.len > 0:
            # the last bytes before the end (src ended with them): held back (MSG_MORE) so that
            # the FIN that follows at once leaves in the same segment, as HAProxy does
            r = send(dst, h.buf + h.off, <size_t>h.len,
                     MSG_NOSIGNAL | MSG_DONTWAIT | (MSG_MORE if h.eof else 0))
            if r > 0:
                h.off += <int>r
                h.len -= <int>r
                h.sent += <unsigned long long>r
                if h.len == 0:
                    h.off = 0
                continue
            return 1 if r < 0 and errno == EAGAIN else -1
        if h.eof:
            if not h.shut:
                # half-close: pass the FIN on, the other direction keeps flowing; when that one
                # has ended too, the close() that follows sends the FIN
                if not other.shut:
                    shutdown(dst, SHUT_WR)
                h.shut = 1
            return 0
        if ready[0] == DRAINED:
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
                if r < w.cfg.buffer_size:
                    if ready[0] == PEER_DONE:
                        h.eof = 1
                        ready[0] = DRAINED
                    elif ready[0] == READABLE:
                        ready[0] = DRAINED
                elif w.cfg.splice_mode == 1:
                    get_pipe(w, h)
                    if h.pipe_r >= 0:
                        h.splicing = 1
                        w.counters[C_SPLICED] += 1
                continue
        if r == 0:
            h.eof = 1
            ready[0] = DRAINED
            continue
        if errno == EAGAIN:
            ready[0] = DRAINED
            return 0
        return -1


cdef void watch_client_out(Worker* w, Conn* c) noexcept nogil:
    """Also wake on the client socket's write space, once a write to it has blocked.

    It is left out until then: most clients never fill their socket, and every state change
    of a socket watched for EPOLLOUT (the ACK of a FIN, say) would be one more event.
    """
    cdef epoll_event ev
    ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET
    ev.data.ptr = &c.cside
    epoll_ctl(w.epfd, EPOLL_CTL_MOD, c.cfd, &ev)
    c.cwatch_out = 1


cdef void pump(Worker* w, Conn* c) noexcept nogil:
    cdef int down
    cdef unsigned long long up_sent = c.up.sent, down_sent = c.down.sent
    if pump_half(w, &c.up, c.cfd, c.bfd, &c.cready, &c.down) < 0:
        conn_close(w, c, True)
        return
    if c.up.sent != up_sent:
        c.awaiting = w.now  # the backend owes an answer (timeout server counts from here)
    down = pump_half(w, &c.down, c.bfd, c.cfd, &c.bready, &c.up)
    if c.down.sent != down_sent:
        c.awaiting = 0.0
        if c.ep != NULL and c.ep.failures != 0:
            lb_atomic_store(&c.ep.failures, 0)  # it answers: its run of failures ends
    if down < 0:
        conn_close(w, c, True)
    elif c.up.shut and c.down.shut:
        conn_close(w, c, False)
    elif down == 1 and not c.cwatch_out:
        watch_client_out(w, c)


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


cdef void endpoint_failed(Worker* w, Service* s, Endpoint* ep) noexcept nogil:
    """Count a failure of ``ep`` (refused, timed out, no answer); after ``eject_after`` in a
    row it is ejected: no new connection for ``down_time``, doubled at each ejection up to 5
    minutes, unless ``max_ejected_share`` of the service's endpoints are ejected already (at
    least one may always be), as Envoy's outlier detection does. Failures while it is ejected
    do not count."""
    cdef int i, ejected = 0, cap
    cdef double d
    if lb_atomic_add(&ep.failures, 1) < w.cfg.eject_after:
        return
    pthread_mutex_lock(&s.lock)
    if ep.ejections > 0 and ep.down_until > w.now:
        # already ejected: these are connections made before, failing together (64 clients
        # on a stopped backend); as Envoy, they do not eject it again, nor double its time
        lb_atomic_store(&ep.failures, 0)
        pthread_mutex_unlock(&s.lock)
        return
    for i in range(s.neps):
        if s.eps[i] != ep and s.eps[i].ejections > 0 and s.eps[i].down_until > w.now:
            ejected += 1
    cap = <int>(w.cfg.max_ejected_share * s.neps)
    if ejected < (cap if cap > 1 else 1):
        d = w.cfg.down_time * (1 << (ep.ejections if ep.ejections < 16 else 16))
        ep.down_until = w.now + (d if d < 300.0 else 300.0)
        ep.ejections += 1
        if 0 <= ep.ident < s.nidents and s.by_ident[ep.ident] == ep:
            s.down[ep.ident] = ep.down_until
        lb_atomic_store(&ep.failures, 0)
        w.counters[C_EJECTED] += 1
    pthread_mutex_unlock(&s.lock)


cdef bint backend_failed(Worker* w, Conn* c) noexcept nogil:
    """The backend refused or timed out: mark it down; True when another try is allowed."""
    w.counters[C_CONNECT_FAILED] += 1
    if c.bfd >= 0:
        close(c.bfd)
        c.bfd = -1
    c.bready = DRAINED
    if c.ep != NULL:
        mark_down(w, c.listener.svc, c.ep)
        endpoint_failed(w, c.listener.svc, c.ep)
        if c.tries < 8:
            c.tried[c.tries] = c.ep
        c.tries += 1
        ep_release(c.listener.svc, c.ep)
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
        ep = svc_pick(c.listener, &c.client, w.now, c.tried, c.tries if c.tries < 8 else 8)
        if ep == NULL:
            w.counters[C_REJECTED] += 1
            conn_close(w, c, True)
            return
        fd = socket(ep.addr.sin6_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)
        if fd < 0:
            if errno == EMFILE or errno == ENFILE or errno == ENOBUFS or errno == ENOMEM:
                out_of_descriptors(w, c.listener)
            ep_release(c.listener.svc, ep)
            w.counters[C_REJECTED] += 1
            conn_close(w, c, True)
            return
        set_nodelay(fd)
        if c.up.len > 0:
            delay_handshake_ack(fd)
        c.bfd = fd
        c.ep = ep
        c.started = w.now
        c.state = ST_CONNECTING
        c.connect_iter = w.iter
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


cdef inline int readiness(uint32_t events) noexcept nogil:
    if events & (EPOLLHUP | EPOLLERR):
        return ENDING
    if events & EPOLLRDHUP:
        return PEER_DONE
    return READABLE if events & EPOLLIN else DRAINED


cdef void on_conn_event(Worker* w, Side* side, uint32_t events) noexcept nogil:
    cdef Conn* c = side.conn
    cdef int ready = readiness(events)
    if c.closed:
        return
    if side.kind == K_CLIENT:
        if ready > c.cready:
            c.cready = ready
        if c.state == ST_CONNECTING:
            return  # client bytes wait in the kernel until the backend is there
    elif c.state == ST_CONNECTING:
        if c.connect_iter == w.iter:
            # the socket was made after this batch of events was read: the event is about the
            # socket of an attempt that failed and was closed earlier in the batch
            return
        if events & (EPOLLERR | EPOLLHUP):
            if backend_failed(w, c):
                connect_backend(w, c)
        elif events & EPOLLOUT:
            # writable and no error: the handshake is done (no getsockopt, no getpeername)
            c.bready = ready
            conn_opened(w, c)
        return
    elif ready > c.bready:
        c.bready = ready
    c.last_active = w.now
    pump(w, c)


cdef bint read_first(Worker* w, Conn* c) noexcept nogil:
    """Read what a just-accepted client has sent already (a request usually comes right
    behind the handshake), before its socket is watched: the backend's handshake can then
    carry its last ACK with these bytes; bytes beyond one buffer are reported by the
    (edge-triggered) registration that follows. False when the client failed (the connection
    is closed)."""
    cdef ssize_t r = recv(c.cfd, c.up.buf, <size_t>w.cfg.buffer_size, MSG_DONTWAIT)
    if r > 0:
        c.up.len = <int>r
    elif r == 0:
        c.up.eof = 1
    elif errno != EAGAIN:
        conn_close(w, c, True)
        return False
    return True


cdef void pause_listener(Worker* w, ListenSock* ls, double resume_at) noexcept nogil:
    """Take a listening socket out of the worker's epoll set: new connections wait in the
    kernel's accept queue. ``tick`` resumes it at ``resume_at`` (a monotonic time), or, when
    that is 0, once it is below its limits again (:func:`at_limit`)."""
    if ls.paused or w.npaused >= MAX_PAUSED:
        return
    epoll_ctl(w.epfd, EPOLL_CTL_DEL, ls.fd, NULL)
    ls.paused = 1
    ls.resume_at = resume_at
    lb_atomic_add(&ls.listener.refs, 1)
    w.paused[w.npaused] = ls
    w.npaused += 1


cdef inline bint at_limit(Worker* w, Listener* l) noexcept nogil:
    """Whether ``l`` has ``max_connections`` open, or every listener together has the
    engine's ``max_total_connections``."""
    return ((l.max_conns > 0 and lb_atomic_load(&l.conns) >= l.max_conns)
            or (w.cfg.max_conns > 0 and lb_atomic_load(&w.cfg.conns) >= w.cfg.max_conns))


cdef void out_of_descriptors(Worker* w, Listener* l) noexcept nogil:
    """No descriptor or memory for a socket: this worker's sockets of ``l`` rest for
    ``FD_PAUSE`` (open connections go on; new ones wait in the kernel's accept queue), as nginx
    and HAProxy do, instead of taking connections it cannot serve."""
    cdef int i
    w.counters[C_FD_EXHAUSTED] += 1
    for i in range(l.nsocks):
        if l.socks[i].worker == w.id and l.socks[i].kind != K_LISTEN_UDP:
            pause_listener(w, &l.socks[i], w.now + FD_PAUSE)


cdef void on_accept(Worker* w, ListenSock* ls) noexcept nogil:
    cdef Listener* l = ls.listener
    cdef sockaddr_storage client
    cdef socklen_t alen
    cdef int fd, k
    cdef Conn* c
    cdef epoll_event ev
    for k in range(BATCH):
        if at_limit(w, l):
            # at the limit: stop accepting, new connections wait in the kernel's queue
            if not ls.paused and w.npaused < MAX_PAUSED:
                pause_listener(w, ls, 0.0)
                w.counters[C_PAUSED] += 1
                return
            # no room to set it aside: refuse this one rather than spin on a readable socket
            fd = accept4(ls.fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)
            if fd >= 0:
                close_with_reset(fd)
                w.counters[C_REJECTED] += 1
            return
        alen = sizeof(client)
        # non-blocking from the start, TCP_NODELAY inherited from the listener: no more calls
        fd = accept4(ls.fd, <sockaddr*>&client, &alen, SOCK_NONBLOCK | SOCK_CLOEXEC)
        if fd < 0:
            if errno == EMFILE or errno == ENFILE or errno == ENOBUFS or errno == ENOMEM:
                # the pending connection stays queued and the socket readable: accepting again
                # at once would spin
                out_of_descriptors(w, l)
            return
        w.counters[C_ACCEPTED] += 1
        c = conn_new(w, fd, l, &client, alen)
        if c == NULL:
            close_with_reset(fd)
            continue
        if not read_first(w, c):
            continue
        ev.events = EPOLLIN | EPOLLRDHUP | EPOLLET  # EPOLLOUT once a write blocks
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


cdef inline void lru_unlink(Worker* w, Flow* f) noexcept nogil:
    if f.prev != NULL:
        f.prev.next = f.next
    else:
        w.flows = f.next
    if f.next != NULL:
        f.next.prev = f.prev
    else:
        w.flows_tail = f.prev
    f.prev = NULL
    f.next = NULL


cdef inline void lru_push(Worker* w, Flow* f) noexcept nogil:
    """Make ``f`` the most recently used flow."""
    f.prev = NULL
    f.next = w.flows
    if w.flows != NULL:
        w.flows.prev = f
    else:
        w.flows_tail = f
    w.flows = f


cdef inline void lru_touch(Worker* w, Flow* f) noexcept nogil:
    if w.flows != f:
        lru_unlink(w, f)
        lru_push(w, f)


cdef inline uint64_t client_hash(const uint8_t* addr) noexcept nogil:
    return XXH3_64bits(addr, 16)


cdef ClientFlows* client_flows(Worker* w, sockaddr_storage* client, bint create) noexcept nogil:
    """The flow count of ``client``'s IP on this worker (made when ``create``), or NULL."""
    cdef ct_key k
    cdef ClientFlows* c
    cdef uint64_t b
    client_key(client, &k)
    b = client_hash(k.addr) & <uint64_t>(w.nbuckets - 1)
    c = w.clients[b]
    while c != NULL and memcmp(c.addr, k.addr, 16) != 0:
        c = c.next
    if c == NULL and create:
        c = <ClientFlows*>calloc(1, sizeof(ClientFlows))
        if c != NULL:
            memcpy(c.addr, k.addr, 16)
            c.next = w.clients[b]
            w.clients[b] = c
    return c


cdef void client_flows_drop(Worker* w, ClientFlows* c) noexcept nogil:
    """One flow of ``c`` is gone; forget the client with its last one."""
    cdef ClientFlows** slot
    c.count -= 1
    if c.count > 0:
        return
    slot = &w.clients[client_hash(c.addr) & <uint64_t>(w.nbuckets - 1)]
    while slot[0] != NULL and slot[0] != c:
        slot = &slot[0].next
    if slot[0] == c:
        slot[0] = c.next
    free(c)


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
    lru_unlink(w, f)
    w.nflows -= 1
    if f.owner != NULL:
        client_flows_drop(w, f.owner)
        f.owner = NULL
    ep_release(f.lsock.listener.svc, f.ep)
    listener_decref(f.lsock.listener)
    f.next_dead = w.dead_flows
    w.dead_flows = f


cdef inline void forget_unused(Worker* w, ClientFlows* c) noexcept nogil:
    """Free a client entry made for a flow that was not opened after all."""
    if c != NULL and c.count == 0:
        c.count = 1
        client_flows_drop(w, c)


cdef Flow* oldest_flow_of(Worker* w, ClientFlows* c) noexcept nogil:
    """The least recently used flow of client ``c`` (from the tail of the worker's list)."""
    cdef Flow* f = w.flows_tail
    while f != NULL and f.owner != c:
        f = f.prev
    return f


cdef bint make_room(Worker* w, ClientFlows* c) noexcept nogil:
    """Close the least recently used flow when this client, or the worker, is at its cap, as
    conntrack evicts; False when there is no room and nothing to evict."""
    cdef Flow* victim = NULL
    if c.count >= w.cfg.udp_max_client_flows:
        victim = oldest_flow_of(w, c)
    elif w.nflows >= w.cfg.udp_max_flows:
        victim = w.flows_tail
    else:
        return True
    if victim == NULL:
        return False
    w.counters[C_UDP_EVICTED] += 1
    flow_close(w, victim)
    return True


cdef Flow* flow_new(Worker* w, ListenSock* ls, sockaddr_storage* client, socklen_t alen,
                    uint64_t h) noexcept nogil:
    cdef Endpoint* ep
    cdef Flow* f
    cdef int fd
    cdef epoll_event ev
    cdef size_t b
    cdef ClientFlows* owner = client_flows(w, client, True)
    if owner == NULL or not make_room(w, owner):
        forget_unused(w, owner)
        return NULL
    # the eviction may have freed a client entry that held only the evicted flow: look again
    owner = client_flows(w, client, True)
    if owner == NULL:
        return NULL
    ep = svc_pick(ls.listener, client, w.now, NULL, 0)
    if ep == NULL:
        forget_unused(w, owner)
        return NULL
    fd = socket(ep.addr.sin6_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)
    if fd < 0:
        ep_release(ls.listener.svc, ep)
        forget_unused(w, owner)
        return NULL
    if connect(fd, <sockaddr*>&ep.addr, ep.addrlen) != 0:
        close(fd)
        ep_release(ls.listener.svc, ep)
        forget_unused(w, owner)
        return NULL
    f = <Flow*>calloc(1, sizeof(Flow))
    if f == NULL:
        close(fd)
        ep_release(ls.listener.svc, ep)
        forget_unused(w, owner)
        return NULL
    f.kind = K_FLOW
    f.fd = fd
    f.lsock = ls
    f.ep = ep
    memcpy(&f.client, client, alen)
    f.client_len = alen
    f.hash = h
    f.last_active = w.now
    f.owner = owner
    owner.count += 1
    lb_atomic_add(&ls.listener.refs, 1)
    b = h & <uint64_t>(w.nbuckets - 1)
    f.bucket_next = w.buckets[b]
    w.buckets[b] = f
    lru_push(w, f)
    w.nflows += 1
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
            lru_touch(w, f)
            r = send(f.fd, w.dgram, <size_t>n, MSG_DONTWAIT)
            if r >= 0 or errno != ECONNREFUSED:
                break
            # an ICMP port unreachable came back on this flow: the endpoint is not listening
            mark_down(w, f.lsock.listener.svc, f.ep)
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
                mark_down(w, f.lsock.listener.svc, f.ep)
                flow_close(w, f)
            return
        f.last_active = w.now
        lru_touch(w, f)
        sendto(f.lsock.fd, w.dgram, <size_t>n, MSG_DONTWAIT, <sockaddr*>&f.client,
               f.client_len)


# ---------------------------------------------------------------------------------------------
# HTTP and TLS: the route frontend
# ---------------------------------------------------------------------------------------------

include "_proxy_http.pxi"


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------

cdef void run_command(Worker* w, Command* cmd) noexcept nogil:
    cdef ListenSock* ls = cmd.ls
    cdef Flow* f
    cdef Flow* nxt
    cdef int i
    if cmd.op == CMD_ADD:
        watch_listener(w, ls)
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


cdef void give_back_freed(Worker* w) noexcept nogil:
    """After a burst of connections beyond the spare ones, their freed buffers stay in the
    allocator's arenas as touched pages, scattered between live blocks, and the resident size
    creeps up with every burst (about 35 bytes per connection). Return those pages to the
    kernel, at most once a second, so that connections that come and go leave it flat (the
    allocator's bytes in use stay flat either way: nothing is leaked, only left resident)."""
    if w.freed and w.now >= w.next_trim:
        malloc_trim(0)
        w.freed = 0
        w.next_trim = w.now + 1.0


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
        elif (cfg.server_timeout > 0 and c.awaiting > 0
                and w.now - c.awaiting > cfg.server_timeout):
            # HAProxy's timeout server: the request is not answered; the client is reset (its
            # bytes went to this backend, so it cannot be sent elsewhere) and the backend
            # counts a failure toward its ejection
            w.counters[C_SERVER_TIMEOUT] += 1
            if c.ep != NULL:
                endpoint_failed(w, c.listener.svc, c.ep)
            conn_close(w, c, True)
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
        if w.now >= ls.resume_at if ls.resume_at > 0 else not at_limit(w, ls.listener):
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
        if w.nspare < SPARE_CONNS:
            c.next_dead = w.spare
            w.spare = c
            w.nspare += 1
        else:
            free(c.up.buf)
            free(c)
            w.freed += 1
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
            elif kind == K_HCLIENT or kind == K_HBACKEND:
                http_event(w, p, events[i].events)
            elif kind == K_LISTEN_HTTP:
                http_accept(w, <ListenSock*>p)
            elif kind == K_WAKE:
                run_commands(w)
        # closed this round: freed only now, another event of the batch may point at them
        free_dead(w)
        http_free_dead(w)
        if w.now >= w.next_tick:
            tick(w)
            http_tick(w)
            give_back_freed(w)
            free_dead(w)
            http_free_dead(w)
            w.next_tick = w.now + 0.1
        w.iter += 1


cdef void worker_shutdown(Worker* w) noexcept nogil:
    """After the loop has ended: close everything the worker owns."""
    cdef int i
    cdef Conn* c
    w.now = mono()
    run_commands(w)
    while w.conns != NULL:
        conn_close(w, w.conns, False)
    while w.flows != NULL:
        flow_close(w, w.flows)
    http_worker_shutdown(w)
    for i in range(w.npaused):
        listener_decref(w.paused[i].listener)
    w.npaused = 0
    free_dead(w)
    while w.spare != NULL:
        c = w.spare
        w.spare = c.next_dead
        free(c.up.buf)
        free(c)
    w.nspare = 0
    for i in range(2 * w.npipes):
        close(w.pipe_pool[i])
    w.npipes = 0


# ---------------------------------------------------------------------------------------------
# Python face
# ---------------------------------------------------------------------------------------------

cdef int parse_address(str ip, int port, sockaddr_storage* out, socklen_t* outlen) except -1:
    """Fill a zeroed sockaddr for ``ip``:``port``; ConfigError naming the value if invalid.

    ``inet_pton`` reads the address (a dotted quad or IPv6 text, as ``ipaddress`` reads them,
    without a scope): about 8 µs less per endpoint than ``ipaddress.ip_address``, 0.8 s of a
    first sync of 100,000 endpoints."""
    cdef bytes text = ip.encode("ascii", "replace")
    cdef int family = 0
    memset(out, 0, sizeof(sockaddr_storage))
    if b"\0" not in text:
        if inet_pton(AF_INET, text, &(<sockaddr_in*>out).sin_addr) == 1:
            family = AF_INET
        elif inet_pton(AF_INET6, text, &(<sockaddr_in6*>out).sin6_addr) == 1:
            family = AF_INET6
    if family == 0:
        raise ConfigError(f"endpoint ip: {ip!r} is not an IP address")
    if not 0 < port < 65536:
        raise ConfigError(f"endpoint port: {port!r} is not in 1..65535")
    if family == AF_INET:
        (<sockaddr_in*>out).sin_family = AF_INET
        (<sockaddr_in*>out).sin_port = htons(<unsigned short>port)
        outlen[0] = sizeof(sockaddr_in)
    else:
        (<sockaddr_in6*>out).sin6_family = AF_INET6
        (<sockaddr_in6*>out).sin6_port = htons(<unsigned short>port)
        outlen[0] = sizeof(sockaddr_in6)
    return 0


def pipe_max_size() -> int:
    """The largest pipe an unprivileged process may ask for (``fs.pipe-max-size``)."""
    try:
        with open("/proc/sys/fs/pipe-max-size") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 1048576  # the kernel's default


cdef str format_address(Endpoint* ep):
    cdef sockaddr_in* a4
    cdef sockaddr_in6* a6
    if ep.addr.sin6_family == AF_INET:
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
    :param pipe_size: capacity asked for each splice pipe (``F_SETPIPE_SZ``), at most
        ``/proc/sys/fs/pipe-max-size``. A larger pipe moves more per ``splice`` call (fewer
        calls per gigabyte) and may hold up to this many bytes per spliced direction.
    :param connect_timeout: seconds to wait for a backend's handshake before trying another.
    :param idle_timeout: seconds without traffic after which a TCP connection is closed
        (0: never).
    :param udp_idle_timeout: seconds without traffic after which a UDP flow is forgotten.
    :param udp_max_flows: UDP flows held at once (each holds a socket); at the cap the least
        recently used flow is closed for a new one, as conntrack evicts.
    :param udp_max_client_flows: UDP flows of one client IP held at once, likewise (one client
        with many source ports cannot take every descriptor).
    :param server_timeout: seconds a backend may leave bytes it was sent unanswered before the
        connection is reset and the backend counts a failure (HAProxy's ``timeout server``);
        0: no limit.
    :param eject_after: failures in a row (refused, timed out, unanswered) that eject an
        endpoint for ``down_time``, doubled at each ejection up to 300 s.
    :param max_ejected_share: at most this share of a service's endpoints ejected at once (one
        always may be).
    :param max_total_connections: TCP connections open at once over every listener (0: no
        limit); at the cap a listener that has a new connection leaves the worker's epoll set,
        the connection waits in the kernel's accept queue, and the listener comes back once
        below (each listener's own cap is ``add_listener``'s ``max_connections``).
    :param retries: how many other endpoints a new connection tries after a refusal/timeout.
    :param down_time: seconds an endpoint that refused or timed out is not picked.
    """

    cdef Worker* ws
    cdef int nworkers
    cdef Config cfg
    cdef object threads
    cdef dict services
    cdef dict owned       # key -> what its Service borrows: the Balancer (or None), or with
                          # ClientIP affinity (Balancer, AffinityTable, timeout, capacity)
    cdef dict listeners
    cdef int next_listener
    cdef bint is_running
    cdef object lock
    cdef HttpConfig hcfg      # the route frontend's settings (configure_http)
    cdef RouteShared* routes  # the routing table the workers take (set_routes)

    def __cinit__(self, int workers=2, int buffer_size=16384, str splice="auto",
                  int pipe_size=1048576, double connect_timeout=5.0, double idle_timeout=3600.0,
                  double udp_idle_timeout=30.0, int retries=2, double down_time=5.0,
                  int udp_max_flows=65536, int udp_max_client_flows=1024,
                  double server_timeout=60.0, int eject_after=5, double max_ejected_share=0.5,
                  int max_total_connections=0):
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
        if server_timeout < 0:
            raise ConfigError(f"server_timeout: {server_timeout!r} must not be negative")
        if eject_after < 1:
            raise ConfigError(f"eject_after: {eject_after!r} must be positive")
        if not 0 <= max_ejected_share <= 1:
            raise ConfigError(f"max_ejected_share: {max_ejected_share!r} is not in 0..1")
        if max_total_connections < 0:
            raise ConfigError(f"max_total_connections: {max_total_connections!r} must not be negative")
        if udp_max_flows < 1 or udp_max_client_flows < 1:
            raise ConfigError(f"udp_max_flows, udp_max_client_flows: {udp_max_flows!r}, "
                              f"{udp_max_client_flows!r} must be positive")
        self.cfg.buffer_size = buffer_size
        self.cfg.splice_mode = SPLICE_MODES[splice]
        self.cfg.pipe_size = min(pipe_size, pipe_max_size())
        self.cfg.retries = retries
        self.cfg.connect_timeout = connect_timeout
        self.cfg.idle_timeout = idle_timeout
        self.cfg.udp_idle_timeout = udp_idle_timeout
        self.cfg.down_time = down_time
        self.cfg.server_timeout = server_timeout
        self.cfg.eject_after = eject_after
        self.cfg.max_ejected_share = max_ejected_share
        # each worker keeps its share (a client's flows spread over the workers' sockets)
        self.cfg.udp_max_flows = max(1, udp_max_flows // workers)
        self.cfg.udp_max_client_flows = max(1, udp_max_client_flows // workers)
        self.cfg.max_conns = max_total_connections
        self.cfg.conns = 0
        self.nworkers = workers
        self.ws = <Worker*>calloc(workers, sizeof(Worker))
        if self.ws == NULL:
            raise MemoryError()
        for i in range(workers):
            self.ws[i].epfd = -1
            self.ws[i].wakefd = -1
        self.threads = []
        self.services = {}
        self.owned = {}
        self.listeners = {}
        self.next_listener = 1
        self.is_running = False
        self.lock = threading.Lock()
        self.routes = <RouteShared*>calloc(1, sizeof(RouteShared))
        if self.routes == NULL:
            raise MemoryError()
        pthread_mutex_init(&self.routes.lock, NULL)
        self.hcfg.buffer_size = buffer_size
        self.hcfg.header_timeout = 10.0
        self.hcfg.keepalive_timeout = 300.0
        self.hcfg.pool_idle_timeout = 30.0
        self.hcfg.pool_max_idle = 1024

    def __dealloc__(self):
        cdef int i
        if self.ws == NULL:
            return
        if not self.is_running:
            for i in range(self.nworkers):
                self._free_worker(&self.ws[i])
            free(self.ws)
            if self.routes != NULL:
                table_decref(self.routes.table)
                pthread_mutex_destroy(&self.routes.lock)
                free(self.routes)
                self.routes = NULL
        # a running engine cannot be collected: its threads hold a reference to it
        self.ws = NULL

    @property
    def workers(self) -> int:
        """Number of worker threads."""
        return self.nworkers

    @property
    def pipe_size(self) -> int:
        """Capacity asked for each splice pipe, after the ``fs.pipe-max-size`` cap."""
        return self.cfg.pipe_size

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
        w.clients = <ClientFlows**>calloc(w.nbuckets, sizeof(ClientFlows*))
        w.dgram = <char*>malloc(DGRAM_MAX)
        w.epfd = epoll_create1(EPOLL_CLOEXEC)
        w.wakefd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)
        if (w.buckets == NULL or w.clients == NULL or w.dgram == NULL or w.epfd < 0
                or w.wakefd < 0):
            raise OSError(errno, "cannot set up a worker's event loop")
        pthread_mutex_init(&w.qlock, NULL)
        ev.events = EPOLLIN
        ev.data.ptr = w
        epoll_ctl(w.epfd, EPOLL_CTL_ADD, w.wakefd, &ev)
        if http_worker_init(w, &self.hcfg, self.routes) != 0:
            raise MemoryError()
        w.now = mono()
        w.next_tick = w.now + 0.1
        return 0

    cdef void _free_worker(self, Worker* w) noexcept:
        cdef int b
        cdef ClientFlows* c
        if w.epfd >= 0:
            close(w.epfd)
            w.epfd = -1
        if w.wakefd >= 0:
            close(w.wakefd)
            w.wakefd = -1
            pthread_mutex_destroy(&w.qlock)
        free(w.buckets)
        w.buckets = NULL
        if w.clients != NULL:  # flows are closed by now; entries left are counts of none
            for b in range(w.nbuckets):
                while w.clients[b] != NULL:
                    c = w.clients[b]
                    w.clients[b] = c.next
                    free(c)
            free(w.clients)
            w.clients = NULL
        free(w.dgram)
        w.dgram = NULL
        http_worker_free(w)

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
        for ident in list(self.listeners):
            self._remove_listener(ident)
        for key in list(self.services):
            self._forget_service(key)

    # -- services ------------------------------------------------------------------------

    def set_service(self, str key, list endpoints, str algorithm="round_robin",
                    double affinity_timeout=0.0, int affinity_capacity=65536,
                    dict options=None, str hash_key="client_ip") -> None:
        """Create or update the endpoint table of service port ``key``.

        :param endpoints: ``(ip, port, weight, pickable)`` tuples; an endpoint that is not
            pickable (terminating) gets no new connection but keeps its UDP flows; an
            endpoint missing from the list is removed: its UDP flows are dropped, its TCP
            connections are left to finish. Weights go to the algorithm; an endpoint of weight
            0 gets no new connection unless every pickable endpoint has weight 0.
        :param algorithm: a name from ``lbcore.balancers.available()``.
        :param affinity_timeout: seconds of ClientIP affinity, 0 for none.
        :param affinity_capacity: clients the affinity table holds (least recently used go).
        :param options: the algorithm's options (``table_size`` for maglev, ...).
        :param hash_key: what hashed algorithms key by: ``"client_ip"`` or ``"five_tuple"``
            (``lbcore.core._policy_c`` says why the client IP is the default).
        :raises ConfigError: an unknown algorithm (the message lists the available ones), an
            option or weight the algorithm refuses, an invalid address, port or weight.
        """
        cdef Service* s
        cdef uintptr_t p
        cdef int n, npicks, nidents, nold, i, k
        cdef Endpoint** eps = NULL
        cdef Endpoint** picks = NULL
        cdef Endpoint** by_ident = NULL
        cdef Endpoint** old_eps
        cdef Endpoint** old_picks
        cdef Endpoint** old_ids
        cdef int32_t* bal_ids = NULL
        cdef int32_t* bidx = NULL
        cdef double* down = NULL
        cdef int32_t* old_bal_ids
        cdef int32_t* old_bidx
        cdef double* old_down
        cdef Endpoint* ep
        cdef sockaddr_storage addr
        cdef socklen_t alen
        cdef Balancer bal = None
        cdef AffinityTable table = None
        cdef void* bal_p = NULL
        cdef void* table_p = NULL
        cdef void* kept_table_p = NULL
        cdef double epoch = 0.0
        cdef bint five_tuple = hash_key == "five_tuple"
        if hash_key not in ("client_ip", "five_tuple"):
            raise ConfigError(f'hash_key: {hash_key!r} is not "client_ip" or "five_tuple"')
        if algorithm not in balancers.builtin():  # a plugin's (asking plugins costs more)
            available = balancers.available()
            if algorithm not in available:
                raise ConfigError(
                    f"algorithm: {algorithm!r} is not one of {', '.join(available)}")
        rows = {}
        for item in endpoints:
            ip, port, weight, pickable = item
            parse_address(ip, int(port), &addr, &alen)
            if int(weight) < 0:
                raise ConfigError(f"endpoint weight: {weight!r} of {ip} must not be negative")
            rows[(<char*>&addr)[:alen]] = (ip, int(port), int(weight), bool(pickable))
        keys = list(rows)
        chosen = [i for i, b in enumerate(keys) if rows[b][3] and rows[b][2] > 0]
        if not chosen:
            chosen = [i for i, b in enumerate(keys) if rows[b][3]]
        if chosen:
            bal = self._balancer(algorithm, [rows[keys[i]] for i in chosen], options)
            bal_p = <void*>bal
        n = len(keys)
        npicks = len(chosen)
        with self.lock:
            old = self._owned(key)
            if affinity_timeout > 0:
                if old is not None and old[1] is not None and old[2:] == (affinity_timeout,
                                                                         affinity_capacity):
                    table = old[1]
                    kept_table_p = <void*>table
                else:
                    table = AffinityTable(affinity_capacity, affinity_timeout)
                    table.now_ms(mono())  # the table's clock starts now
                table_p = <void*>table
                epoch = table.epoch
            p = self.services.get(key, 0)
            if p == 0:
                s = <Service*>calloc(1, sizeof(Service))
                if s == NULL:
                    raise MemoryError()
                pthread_mutex_init(&s.lock, NULL)
                s.refs = 1
                self.services[key] = <uintptr_t>s
            else:
                s = <Service*>p
            # endpoints that stay keep their structure: connections, flows, affinity id
            known = {(<char*>&s.eps[i].addr)[:s.eps[i].addrlen]: <uintptr_t>s.eps[i]
                     for i in range(s.neps)}
            kept = {known[b] for b in keys if b in known}
            taken = {(<Endpoint*><uintptr_t>q).ident for q in kept}
            free_ids = (i for i in range(n + len(taken) + 1) if i not in taken)
            eps = <Endpoint**>calloc(n + 1, sizeof(Endpoint*))
            picks = <Endpoint**>calloc(npicks + 1, sizeof(Endpoint*))
            if eps == NULL or picks == NULL:
                free(eps)
                free(picks)
                raise MemoryError()
            nidents = 0
            for i, b in enumerate(keys):
                q = known.get(b, 0)
                if q:
                    ep = <Endpoint*><uintptr_t>q
                else:
                    ep = <Endpoint*>calloc(1, sizeof(Endpoint))
                    if ep == NULL:
                        for k in range(i):
                            if <uintptr_t>eps[k] not in kept:
                                free(eps[k])
                        free(eps)
                        free(picks)
                        raise MemoryError()
                    memcpy(&ep.addr, <char*>b, len(b))
                    ep.addrlen = <socklen_t>len(b)
                    ep.refs = 1
                    ep.slot = -1
                    ep.ident = next(free_ids)
                eps[i] = ep
                nidents = max(nidents, ep.ident + 1)
            for k, i in enumerate(chosen):
                picks[k] = eps[i]
            by_ident = <Endpoint**>calloc(nidents + 1, sizeof(Endpoint*))
            if by_ident == NULL:
                for i in range(n):
                    if <uintptr_t>eps[i] not in kept:
                        free(eps[i])
                free(eps)
                free(picks)
                raise MemoryError()
            for i in range(n):
                by_ident[eps[i].ident] = eps[i]
            # the pick policy's view (lbcore.core._policy_c.PickSet), by id
            bal_ids = <int32_t*>calloc(npicks + 1, sizeof(int32_t))
            bidx = <int32_t*>calloc(nidents + 1, sizeof(int32_t))
            down = <double*>calloc(nidents + 1, sizeof(double))
            if bal_ids == NULL or bidx == NULL or down == NULL:
                free(bal_ids)
                free(bidx)
                free(down)
                for i in range(n):
                    if <uintptr_t>eps[i] not in kept:
                        free(eps[i])
                free(eps)
                free(picks)
                free(by_ident)
                raise MemoryError()
            for i in range(nidents):
                bidx[i] = -1
            for k in range(npicks):
                bal_ids[k] = picks[k].ident
                bidx[picks[k].ident] = k
            gone = [q for q in known.values() if q not in kept]
            with nogil:
                pthread_mutex_lock(&s.lock)
                old_eps, old_picks, old_ids, nold = s.eps, s.picks, s.by_ident, s.neps
                old_bal_ids, old_bidx, old_down = s.bal_ids, s.bidx, s.down
                for i in range(n):  # down marks stay with their endpoints
                    down[eps[i].ident] = eps[i].down_until
                for i in range(nold):
                    old_eps[i].slot = -1
                    if old_eps[i].ident >= nidents or by_ident[old_eps[i].ident] != old_eps[i]:
                        # gone: its UDP flows are dropped, its clients pick again
                        lb_atomic_store(&old_eps[i].removed, 1)
                        if kept_table_p != NULL:
                            (<AffinityTable>kept_table_p).purge_c(old_eps[i].ident)
                for i in range(npicks):
                    picks[i].slot = i
                    # the new balancer starts from the live connections of each endpoint
                    for k in range(lb_atomic_load(&picks[i].active)):
                        bal.acquire_c(i)
                s.eps, s.neps, s.picks, s.npicks = eps, n, picks, npicks
                s.by_ident, s.nidents = by_ident, nidents
                s.bal_ids, s.bidx, s.down = bal_ids, bidx, down
                s.five_tuple = five_tuple
                s.balancer = bal_p
                s.affinity = table_p
                s.affinity_epoch = epoch
                pthread_mutex_unlock(&s.lock)
            # no worker can reach the previous balancer or table now: let them go
            # without affinity the balancer alone: no tuple and numbers per service port
            self.owned[key] = (bal if table is None else
                               (bal, table, affinity_timeout, affinity_capacity))
            for q in gone:
                ep_decref(<Endpoint*><uintptr_t>q)
            free(old_eps)
            free(old_picks)
            free(old_ids)
            free(old_bal_ids)
            free(old_bidx)
            free(old_down)

    cdef tuple _owned(self, str key):
        """``(Balancer, AffinityTable, timeout, capacity)`` of service port ``key`` (None for
        what it lacks), or None when the engine has no table of that name."""
        held = self.owned.get(key, _MISSING)
        if held is _MISSING:
            return None
        return held if type(held) is tuple else (held, None, 0.0, 0)

    cdef Balancer _balancer(self, str algorithm, list rows, dict options):
        """A new balancer over ``rows`` (never an update in place: workers may be picking).

        An algorithm whose picks do not depend on the backends' names
        (``lbcore.balancers.POSITIONAL``) gets their positions, names every balancer shares:
        no object per endpoint. Any other gets ``ip:port`` as UTF-8 bytes, the identity a
        balancer hashes a str name to (so picks are those of a balancer given the str names):
        one object per endpoint that the balancer keeps as both its backend and its name."""
        if algorithm in balancers.POSITIONAL:
            names = position_names(len(rows))
        else:
            names = [(f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}").encode()
                     for ip, port, _, _ in rows]
        weights = [float(w) for _, _, w, _ in rows]
        if algorithm == "jump" or len(set(weights)) == 1 or not any(weights):
            weights = None  # jump has no weights
        try:
            made = balancers.create(algorithm, names, weights, **(options or {}))
        except ValueError as exc:
            raise ConfigError(f"algorithm: {algorithm}: {exc}") from None
        if not isinstance(made, Balancer):
            raise ConfigError(
                f"algorithm: {algorithm!r} gives a {type(made).__name__}, not a compiled "
                "lbcore.balancers.Balancer; the data path picks without the GIL and needs one")
        return <Balancer>made

    def remove_service(self, str key) -> None:
        """Forget service port ``key`` (its listeners must be removed first)."""
        with self.lock:
            self._forget_service(key)

    cdef void _forget_service(self, str key):
        cdef uintptr_t p = self.services.pop(key, 0)
        cdef Service* s
        if p == 0:
            return
        s = <Service*>p
        # connections still open on it give their counts back to no balancer
        with nogil:
            pthread_mutex_lock(&s.lock)
            s.balancer = NULL
            s.affinity = NULL
            s.npicks = 0
            pthread_mutex_unlock(&s.lock)
        self.owned.pop(key, None)
        svc_decref(s)

    def service_endpoints(self, str key) -> list:
        """``[{"address", "active", "pickable", "down", "balancer_active"}]`` for service port
        ``key``: ``active`` counts its open connections and flows, ``balancer_active`` what the
        balancer counts for it (None when it takes no new connection)."""
        cdef uintptr_t p
        cdef Service* s
        cdef int i, n
        cdef double now = mono()
        cdef Endpoint** copy
        cdef long long* counts
        out = []
        with self.lock:
            p = self.services.get(key, 0)
            if p == 0:
                return out
            s = <Service*>p
            n = s.neps
            copy = <Endpoint**>calloc(n + 1, sizeof(Endpoint*))
            counts = <long long*>calloc(n + 1, sizeof(long long))
            if copy == NULL or counts == NULL:
                free(copy)
                free(counts)
                raise MemoryError()
            # only C under the service's lock: Python code there could hand the GIL to a worker
            # that then waits for this lock
            with nogil:
                pthread_mutex_lock(&s.lock)
                for i in range(n):
                    copy[i] = s.eps[i]
                    counts[i] = -1
                    if copy[i].slot >= 0 and s.balancer != NULL:
                        counts[i] = (<Balancer>s.balancer).active[copy[i].slot]
                pthread_mutex_unlock(&s.lock)
            try:
                for i in range(n):
                    out.append({
                        "address": format_address(copy[i]),
                        "active": lb_atomic_load(&copy[i].active),
                        "pickable": counts[i] >= 0,
                        "down": copy[i].down_until > now,
                        "balancer_active": counts[i] if counts[i] >= 0 else None,
                    })
            finally:
                free(copy)
                free(counts)
        return out

    def service_info(self, str key) -> dict:
        """``{"algorithm", "endpoints", "pickable", "affinity_bindings", "affinity_clock_ms"}``
        for service port ``key`` (the last two None without ClientIP affinity)."""
        cdef uintptr_t p
        cdef Service* s
        cdef int neps = 0, npicks = 0
        cdef long long bindings = -1
        cdef double clock = -1.0
        with self.lock:
            p = self.services.get(key, 0)
            if p == 0:
                raise KeyError(f"service port: {key!r} has no endpoint table")
            s = <Service*>p
            with nogil:
                pthread_mutex_lock(&s.lock)
                neps, npicks = s.neps, s.npicks
                if s.affinity != NULL:
                    bindings = (<AffinityTable>s.affinity).used
                    clock = (mono() - s.affinity_epoch) * 1000.0
                pthread_mutex_unlock(&s.lock)
            bal, table = self._owned(key)[:2]
        return {
            "algorithm": bal.name if bal is not None else None,
            "endpoints": neps,
            "pickable": npicks,
            "affinity_bindings": bindings if bindings >= 0 else None,
            "affinity_clock_ms": clock if clock >= 0 else None,
        }

    def _age_affinity_clock(self, str key, double seconds) -> None:
        """Move service ``key``'s affinity clock ``seconds`` into the future (tests of the
        clock's rebase, which otherwise comes after about 37 days)."""
        cdef uintptr_t p
        cdef Service* s
        cdef AffinityTable table
        with self.lock:
            p = self.services.get(key, 0)
            table = self._owned(key)[1] if p != 0 else None
            if table is None:
                raise KeyError(f"service port: {key!r} has no affinity table")
            s = <Service*>p
            with nogil:
                pthread_mutex_lock(&s.lock)
                table.epoch -= seconds
                s.affinity_epoch -= seconds
                pthread_mutex_unlock(&s.lock)

    # -- listeners -----------------------------------------------------------------------

    def add_listeners(self, list specs) -> list:
        """:meth:`add_listener` for each ``(key, protocol, fds, max_connections)`` of
        ``specs``, in order: their ids. The workers are handed every listener before this
        waits for them once (a sync that opens 10,000 listeners waits for one round trip to
        each worker, not 10,000). If one cannot be added, those added before it are removed
        and the error is raised."""
        cdef list ids = []
        cdef list pending = []
        try:
            for key, protocol, fds, max_connections in specs:
                ids.append(self._add_listener(key, protocol, fds, max_connections, pending))
        except BaseException:
            self._wait_all(pending)
            for ident in ids:
                self.remove_listener(ident)
            raise
        self._wait_all(pending)
        return ids

    def add_listener(self, str key, str protocol, list fds, int max_connections=0) -> int:
        """Serve bound sockets for service port ``key``; the engine owns ``fds`` from now on.

        :param protocol: ``"TCP"`` (``fds`` holds one listening socket per worker, bound with
            ``SO_REUSEPORT``) or ``"UDP"`` (one datagram socket per worker, bound with
            ``SO_REUSEPORT``, which keeps each client's 4-tuple, so each flow, on one worker; or
            one socket served by one worker).
        :param max_connections: TCP connections open at once through this listener; at the
            limit, new ones wait in the kernel's accept queue. 0: no limit.
        :return: an id for :meth:`remove_listener`.
        """
        cdef list pending = []
        try:
            return self._add_listener(key, protocol, fds, max_connections, pending)
        finally:
            self._wait_all(pending)

    def _add_listener(self, str key, str protocol, list fds, int max_connections,
                      list pending) -> int:
        """add_listener, its commands to the workers queued without waiting (in ``pending``)."""
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
            if len(fds) not in (1, self.nworkers):
                raise ConfigError(f"fds: a UDP listener needs 1 socket or {self.nworkers} (one "
                                  f"per worker, bound with SO_REUSEPORT), got {len(fds)}")
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
            # the service's side of the 5-tuple, as lbcore.Picker packs it (hash_key five_tuple)
            sock = pysocket.socket(fileno=fds[0])
            try:
                address = sock.getsockname()
            finally:
                sock.detach()
            pack_addr(address[0], l.conn.addr + 16, "address")
            pack_port(address[1], &l.conn.dport, "port")
            pack_proto(protocol, &l.conn.proto)
            lb_atomic_add(&l.svc.refs, 1)
            l.max_conns = max_connections
            l.refs = 1 + len(fds)
            l.nsocks = len(fds)
            ident = self.next_listener
            self.next_listener += 1
            for i, fd in enumerate(fds):
                l.socks[i].kind = kind
                l.socks[i].fd = fd
                if kind == K_LISTEN_TCP:
                    set_nodelay(fd)  # accepted sockets inherit it: no call per connection
                l.socks[i].listener = l
                # a UDP socket goes to one worker, spread over them by listener id
                # a socket per worker, or one UDP socket on one worker (chosen by the listener)
                l.socks[i].worker = i if l.nsocks > 1 or kind == K_LISTEN_TCP else ident % self.nworkers
            self.listeners[ident] = <uintptr_t>l
            self._ensure_workers()
            for i in range(l.nsocks):
                self._queue(CMD_ADD, &l.socks[i], pending)
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
        cdef list pending = []
        self._queue(op, ls, pending)
        self._wait_all(pending)

    cdef void _wait_all(self, list pending):
        """Wait for the commands ``_queue`` put in ``pending`` to be done, then free them."""
        cdef Command* cmd
        cdef int waited = 0
        for p in pending:
            cmd = <Command*><uintptr_t>p
            with nogil:
                while not lb_atomic_load(&cmd.done) and waited < 100000:
                    usleep(100)
                    waited += 1
            if lb_atomic_load(&cmd.done):
                free(cmd)
            # else: a stuck worker still owns the command; leaking it is safer than freeing it
        del pending[:]

    cdef void _queue(self, int op, ListenSock* ls, list pending):
        """Hand a listener change to the worker that owns the socket; the command goes to
        ``pending`` (for ``_wait_all``) unless it was applied here (no loop runs)."""
        cdef Worker* w = &self.ws[ls.worker]
        cdef Command* cmd
        cdef uint64_t one = 1
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
                watch_listener(w, ls)
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
        pending.append(<uintptr_t>cmd)

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
        out["open_flows"] = sum(lb_atomic_load(&self.ws[i].nflows) for i in range(self.nworkers))
        out["listeners"] = len(self.listeners)
        out["services"] = len(self.services)
        return out

    # -- the route frontend (HTTP and TLS) -----------------------------------------------

    def configure_http(self, long long max_body_bytes=0, double header_timeout=10.0,
                       double keepalive_timeout=300.0, double pool_idle_timeout=30.0,
                       int pool_max_idle=1024) -> None:
        """Settings of the HTTP data path, before ``start()``.

        :param max_body_bytes: a request body larger than this is refused with 413 (0: no
            limit). A request head must fit in ``buffer_size`` bytes, else 431.
        :param header_timeout: seconds a client has to send a whole request head (408 after),
            and to finish a TLS handshake.
        :param keepalive_timeout: seconds a kept-alive client connection may wait for its next
            request.
        :param pool_idle_timeout: seconds an idle backend connection is kept for reuse.
        :param pool_max_idle: idle backend connections each worker keeps.
        """
        if self.is_running:
            raise ConfigError("configure_http: the engine is running already")
        for name, value in (("header_timeout", header_timeout),
                            ("keepalive_timeout", keepalive_timeout),
                            ("pool_idle_timeout", pool_idle_timeout)):
            if value <= 0:
                raise ConfigError(f"{name}: {value!r} must be positive")
        if max_body_bytes < 0:
            raise ConfigError(f"max_body_bytes: {max_body_bytes!r} must not be negative")
        if pool_max_idle < 0:
            raise ConfigError(f"pool_max_idle: {pool_max_idle!r} must not be negative")
        self.hcfg.max_body = max_body_bytes
        self.hcfg.header_timeout = header_timeout
        self.hcfg.keepalive_timeout = keepalive_timeout
        self.hcfg.pool_idle_timeout = pool_idle_timeout
        self.hcfg.pool_max_idle = pool_max_idle

    def set_routes(self, list hosts, object default_certificate=None) -> None:
        """Replace the routing table (``lbcore.model.routes.RoutingTable``'s shape, as plain
        data); requests and TLS sessions already under way finish on the old one, so a new
        certificate drops no connection.

        :param hosts: one dict per virtual host: ``{"host": "www.example.com",
            "*.example.com" or "" (any host), "certificate": PEM chain, "key": PEM (optional),
            "http": [rule, ...], "https": [rule, ...], "passthrough": rule or None}``, rules in
            match order, each ``{"path": "/app", "match": "Prefix" | "Exact", "redirect":
            bool, "reencrypt": bool, "destination_ca": PEM, "backends": [(service port key,
            weight 0..256[, verify host]), ...]}``; service port keys are those of
            ``set_service``; a reencrypt backend's verify host is the name its pods'
            certificates must carry (besides chaining to ``destination_ca``).
        :param default_certificate: ``(chain PEM, key PEM)`` an HTTPS listener presents when
            the SNI names no host with a certificate of its own.
        :raises ConfigError: an unknown service port, a bad weight, a certificate or key that
            does not parse or match, a host given twice.
        """
        cdef RTable* t
        cdef RTable* old
        with self.lock:
            t = build_table(hosts, self.services, default_certificate)
            with nogil:
                pthread_mutex_lock(&self.routes.lock)
                old = self.routes.table
                self.routes.table = t
                self.routes.gen += 1
                pthread_mutex_unlock(&self.routes.lock)
            table_decref(old)

    def add_http_listener(self, list fds, bint https=False, int port=0, int redirect_port=443,
                          int max_connections=0, bint tls_resumption=True) -> int:
        """Serve HTTP (or, ``https``, HTTPS) on bound sockets, one per worker; the engine owns
        ``fds`` from now on. Each request is routed by the table of ``set_routes``.

        :param port: the port clients reach this listener on (``X-Forwarded-Port``).
        :param redirect_port: the HTTPS port ``insecureEdgeTerminationPolicy: Redirect`` sends
            plain HTTP clients to.
        :param tls_resumption: TLS session tickets and the session cache (False: every
            handshake is a full one).
        :return: an id for :meth:`remove_listener`.
        """
        cdef Listener* l
        cdef HttpListen* hl
        cdef int i, ident
        if len(fds) != self.nworkers:
            raise ConfigError(f"fds: an HTTP listener needs {self.nworkers} sockets, got {len(fds)}")
        with self.lock:
            l = <Listener*>calloc(1, sizeof(Listener))
            hl = <HttpListen*>calloc(1, sizeof(HttpListen))
            if l == NULL or hl == NULL:
                free(l)
                free(hl)
                raise MemoryError()
            l.http = hl
            hl.https = https
            hl.redirect_port = redirect_port
            hl.routes = self.routes
            if https:
                try:
                    hl.ctx = listener_context(self.routes, tls_resumption)
                except BaseException:
                    free(hl)
                    free(l)
                    raise
            sock = pysocket.socket(fileno=fds[0])
            try:
                address = sock.getsockname()
            finally:
                sock.detach()
            hl.port = port or address[1]
            pack_addr(address[0], hl.side.addr + 16, "address")
            pack_port(address[1], &hl.side.dport, "port")
            pack_proto("TCP", &hl.side.proto)
            l.max_conns = max_connections
            l.refs = 1 + len(fds)
            l.nsocks = len(fds)
            ident = self.next_listener
            self.next_listener += 1
            for i, fd in enumerate(fds):
                l.socks[i].kind = K_LISTEN_HTTP
                l.socks[i].fd = fd
                set_nodelay(fd)
                l.socks[i].listener = l
                l.socks[i].worker = i
            self.listeners[ident] = <uintptr_t>l
            self._ensure_workers()
            for i in range(l.nsocks):
                self._command(CMD_ADD, &l.socks[i])
        return ident

    def http_stats(self) -> dict:
        """Counters of the HTTP data path summed over the workers (``requests``, ``responses``,
        ``not_found``, ``unavailable``, ``backend_connects``, ``backend_reuses``, ...), and
        ``idle_backends``: backend connections in the pools now."""
        cdef int i, k
        cdef HttpWorker* hw
        out = {name: 0 for name in HTTP_COUNTERS}
        idle = 0
        for i in range(self.nworkers):
            hw = <HttpWorker*>self.ws[i].http
            if hw == NULL:
                continue
            for k in range(HC_N):
                out[HTTP_COUNTERS[k]] += lb_atomic_load_u64(&hw.counters[k])
            idle += lb_atomic_load(&hw.idle)
        out["idle_backends"] = idle
        return out
