"""The route frontend's data path: HTTP/1.1 and TLS over the socket engine's workers.

Included by ``_proxy_c.pyx``: it runs in the same epoll workers, picks endpoints with the same
``service_pick`` (the shared pick policy over each service port's Balancer and affinity table),
and uses the engine's listeners, endpoint tables and failure marks.

A client connection reads a request head and parses it with picohttpparser (vendored in
``include/picohttpparser``); the route is chosen by ``Host`` (exact, then wildcard) and the
longest matching path; the service by weight over the route's backends; the endpoint by the
service's pick policy. The request goes up on a keep-alive connection to that endpoint taken
from the worker's pool (or a new one), with ``X-Forwarded-*`` and ``Forwarded`` added and
hop-by-hop headers removed; the response comes down with its framing (``Content-Length``,
chunked, or until the backend closes) tracked, so both connections are kept for the next
request. A request whose backend connection was closed under it before any answer is sent
again on another connection when all of it is still in memory.

TLS (OpenSSL): an HTTPS listener ends TLS with the certificate of the route the SNI names
(``edge`` and ``reencrypt``); ``passthrough`` routes are recognised from the ClientHello, read
with ``MSG_PEEK`` and handed to OpenSSL's own parser, and the untouched stream is relayed to the
endpoint; ``reencrypt`` speaks TLS to the endpoint, verified against the route's CA.
"""

from libc.string cimport memchr, memmove, strncasecmp

cdef extern from "<sys/socket.h>" nogil:
    enum:
        MSG_PEEK

cdef extern from "picohttpparser/picohttpparser.c" nogil:
    struct phr_header:
        const char* name
        size_t name_len
        const char* value
        size_t value_len

    struct phr_chunked_decoder:
        size_t bytes_left_in_chunk
        char consume_trailer

    int phr_parse_request(const char* buf, size_t len, const char** method, size_t* method_len,
                          const char** path, size_t* path_len, int* minor_version,
                          phr_header* headers, size_t* num_headers, size_t last_len)
    int phr_parse_response(const char* buf, size_t len, int* minor_version, int* status,
                           const char** msg, size_t* msg_len, phr_header* headers,
                           size_t* num_headers, size_t last_len)
    ssize_t phr_decode_chunked(phr_chunked_decoder* decoder, char* buf, size_t* bufsz)


cdef extern from "<openssl/err.h>" nogil:
    unsigned long ERR_peek_error()
    int ERR_GET_REASON(unsigned long e)

cdef extern from "<openssl/pem.h>":
    pass

cdef extern from "<openssl/ssl.h>" nogil:
    ctypedef struct SSL_CTX:
        pass
    ctypedef struct SSL:
        pass
    ctypedef struct SSL_METHOD:
        pass
    ctypedef struct BIO:
        pass
    ctypedef struct BIO_METHOD:
        pass
    ctypedef struct X509:
        pass
    ctypedef struct EVP_PKEY:
        pass
    ctypedef struct X509_STORE:
        pass

    enum:
        SSL_ERROR_WANT_READ
        SSL_ERROR_WANT_WRITE
        SSL_ERROR_ZERO_RETURN
        SSL_ERROR_SYSCALL
        SSL_ERROR_SSL
        SSL_R_UNEXPECTED_EOF_WHILE_READING
        SSL_MODE_ENABLE_PARTIAL_WRITE
        SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER
        SSL_MODE_RELEASE_BUFFERS
        TLS1_2_VERSION
        TLSEXT_NAMETYPE_host_name
        SSL_TLSEXT_ERR_OK
        SSL_TLSEXT_ERR_ALERT_FATAL
        SSL_VERIFY_PEER
        SSL_VERIFY_NONE
        SSL_OP_NO_RENEGOTIATION
        SSL_OP_NO_TICKET
        SSL_SESS_CACHE_OFF

    const SSL_METHOD* TLS_server_method()
    const SSL_METHOD* TLS_client_method()
    SSL_CTX* SSL_CTX_new(const SSL_METHOD* method)
    void SSL_CTX_free(SSL_CTX* ctx)
    long SSL_CTX_set_mode(SSL_CTX* ctx, long mode)
    unsigned long SSL_CTX_set_options(SSL_CTX* ctx, unsigned long op)
    int SSL_CTX_set_min_proto_version(SSL_CTX* ctx, int version)
    long SSL_CTX_set_session_cache_mode(SSL_CTX* ctx, long mode)
    int SSL_CTX_set_num_tickets(SSL_CTX* ctx, size_t num_tickets)
    int SSL_CTX_use_certificate(SSL_CTX* ctx, X509* x)
    int SSL_CTX_use_PrivateKey(SSL_CTX* ctx, EVP_PKEY* pkey)
    int SSL_CTX_check_private_key(const SSL_CTX* ctx)
    long SSL_CTX_add_extra_chain_cert(SSL_CTX* ctx, X509* x)
    void SSL_CTX_set_verify(SSL_CTX* ctx, int mode, void* callback)
    X509_STORE* SSL_CTX_get_cert_store(const SSL_CTX* ctx)
    int SSL_CTX_set_default_verify_paths(SSL_CTX* ctx)
    long SSL_CTX_set_tlsext_servername_callback(SSL_CTX* ctx,
                                                int (*cb)(SSL*, int*, void*) noexcept nogil)
    SSL* SSL_new(SSL_CTX* ctx)
    void SSL_free(SSL* ssl)
    int SSL_set_fd(SSL* ssl, int fd)
    void SSL_set_bio(SSL* ssl, BIO* rbio, BIO* wbio)
    void SSL_set_accept_state(SSL* ssl)
    void SSL_set_connect_state(SSL* ssl)
    int SSL_do_handshake(SSL* ssl)
    int SSL_read(SSL* ssl, void* buf, int num)
    int SSL_write(SSL* ssl, const void* buf, int num)
    int SSL_get_error(const SSL* ssl, int ret)
    int SSL_has_pending(const SSL* ssl)
    int SSL_shutdown(SSL* ssl)
    const char* SSL_get_servername(const SSL* ssl, int type)
    SSL_CTX* SSL_set_SSL_CTX(SSL* ssl, SSL_CTX* ctx)
    int SSL_set_app_data(SSL* ssl, void* arg)
    void* SSL_get_app_data(const SSL* ssl)
    long SSL_set_tlsext_host_name(SSL* ssl, const char* name)
    int SSL_set1_host(SSL* ssl, const char* hostname)
    int SSL_CTX_up_ref(SSL_CTX* ctx)
    const char* SSL_get_version(const SSL* ssl)
    X509* PEM_read_bio_X509(BIO* bp, X509** x, void* cb, void* u)
    EVP_PKEY* PEM_read_bio_PrivateKey(BIO* bp, EVP_PKEY** x, void* cb, void* u)
    BIO* BIO_new_mem_buf(const void* buf, int len)
    BIO* BIO_new(const BIO_METHOD* kind)
    const BIO_METHOD* BIO_s_mem()
    int BIO_write(BIO* b, const void* data, int dlen)
    int BIO_free(BIO* a)
    int BIO_get_new_index()
    BIO_METHOD* BIO_meth_new(int type, const char* name)
    int BIO_meth_set_write(BIO_METHOD* m, int (*write)(BIO*, const char*, int) noexcept nogil)
    int BIO_meth_set_read(BIO_METHOD* m, int (*read)(BIO*, char*, int) noexcept nogil)
    int BIO_meth_set_ctrl(BIO_METHOD* m, long (*ctrl)(BIO*, int, long, void*) noexcept nogil)
    int BIO_meth_set_create(BIO_METHOD* m, int (*create)(BIO*) noexcept nogil)
    void BIO_set_data(BIO* b, void* ptr)
    void* BIO_get_data(BIO* b)
    void BIO_set_init(BIO* b, int init)
    void BIO_set_retry_read(BIO* b)
    void BIO_set_retry_write(BIO* b)
    void BIO_clear_retry_flags(BIO* b)
    long SSL_CTX_set_read_ahead(SSL_CTX* ctx, long yes)
    enum:
        BIO_TYPE_SOURCE_SINK
        BIO_CTRL_FLUSH
    void X509_free(X509* a)
    void EVP_PKEY_free(EVP_PKEY* pkey)
    int X509_STORE_add_cert(X509_STORE* store, X509* x)
    void ERR_clear_error()
    unsigned long ERR_get_error()
    void ERR_error_string_n(unsigned long e, char* buf, size_t len)


# ---------------------------------------------------------------------------------------------
# The routing table, as the workers read it: immutable once built, reference counted
# ---------------------------------------------------------------------------------------------

cdef enum:
    MATCH_PREFIX = 0     # the rule's path, or it followed by "/..." ("" and "/": every path)
    MATCH_EXACT = 1      # the whole path

cdef struct RBackend:
    Service* svc         # one reference
    int weight
    char* verify_host    # reencrypt: the name the pod's certificate must carry (owned), or NULL

cdef struct RRule:
    char* path
    int path_len
    int match
    int redirect         # plain HTTP: answer 302 to https:// (insecureEdgeTerminationPolicy)
    int passthrough      # the stream is relayed unread (SNI chose it)
    SSL_CTX* dest_ctx    # reencrypt: TLS to the endpoint, verified with this context (owned)
    RBackend* backends
    int nbackends

cdef struct RHost:
    char* name           # lower case; a wildcard host is stored without its first label
    int name_len
    int wildcard
    uint64_t hash
    SSL_CTX* ctx         # the certificate SNI selects (owned), or NULL: the default one
    RRule* http          # the plain HTTP listener's rules, in match order
    int nhttp
    RRule* https         # the rules once TLS ended here, in match order
    int nhttps
    RRule* passthrough   # a passthrough route of this name, or NULL
    RHost* next          # the hash bucket's chain

cdef struct RTable:
    int refs
    RHost* hosts
    int nhosts
    RHost** buckets
    int nbuckets
    RHost* any           # the host "" (Ingress rules without a host, defaultBackend), or NULL
    int any_passthrough
    SSL_CTX* default_ctx # answers a ClientHello naming no host with a certificate (owned)

cdef struct RouteShared:
    pthread_mutex_t lock
    RTable* table
    int gen


cdef void rules_free(RRule* rules, int n) noexcept nogil:
    cdef int j, k
    if rules == NULL:
        return
    for j in range(n):
        for k in range(rules[j].nbackends):
            if rules[j].backends[k].svc != NULL:
                svc_decref(rules[j].backends[k].svc)
            free(rules[j].backends[k].verify_host)
        free(rules[j].backends)
        free(rules[j].path)
        if rules[j].dest_ctx != NULL:
            SSL_CTX_free(rules[j].dest_ctx)
    free(rules)


cdef void table_decref(RTable* t) noexcept nogil:
    cdef int i
    cdef RHost* h
    if t == NULL or lb_atomic_add(&t.refs, -1) != 0:
        return
    for i in range(t.nhosts):
        h = &t.hosts[i]
        rules_free(h.http, h.nhttp)
        rules_free(h.https, h.nhttps)
        rules_free(h.passthrough, 1 if h.passthrough != NULL else 0)
        free(h.name)
        if h.ctx != NULL:
            SSL_CTX_free(h.ctx)
    free(t.hosts)
    free(t.buckets)
    if t.default_ctx != NULL:
        SSL_CTX_free(t.default_ctx)
    free(t)


cdef inline uint64_t host_hash(const char* name, int n, int wildcard) noexcept nogil:
    return XXH3_64bits(name, n) ^ <uint64_t>wildcard


cdef RHost* table_find(RTable* t, const char* name, int n, int wildcard) noexcept nogil:
    cdef uint64_t h = host_hash(name, n, wildcard)
    cdef RHost* e = t.buckets[h & <uint64_t>(t.nbuckets - 1)]
    while e != NULL:
        if e.hash == h and e.name_len == n and e.wildcard == wildcard and \
                memcmp(e.name, name, n) == 0:
            return e
        e = e.next
    return NULL


cdef RHost* named_host(RTable* t, const char* name, int n) noexcept nogil:
    """The host entry of ``name`` (lower case, no port): exact, else the wildcard of its parent
    domain (one more label, as the OpenShift router and Ingress match ``*.example.com``)."""
    cdef RHost* e
    cdef const char* dot
    if t == NULL or n <= 0:
        return NULL
    e = table_find(t, name, n, 0)
    if e != NULL:
        return e
    dot = <const char*>memchr(name, 46, n)  # '.'
    if dot == NULL or dot - name + 1 >= n:
        return NULL
    return table_find(t, dot + 1, n - <int>(dot - name) - 1, 1)


cdef bint path_matches(RRule* r, const char* path, int n) noexcept nogil:
    """lbcore.model.routes.path_matches, in C."""
    if r.match == MATCH_EXACT:
        return n == r.path_len and memcmp(path, r.path, n) == 0
    if r.path_len == 0 or (r.path_len == 1 and r.path[0] == 47):
        return True
    if n < r.path_len or memcmp(path, r.path, r.path_len) != 0:
        return False
    return n == r.path_len or r.path[r.path_len - 1] == 47 or path[r.path_len] == 47  # '/'


cdef int sni_to_host(SSL* ssl, int* alert, void* arg) noexcept nogil:
    """OpenSSL's servername callback: answer with the certificate of the host SNI names."""
    cdef HConn* c = <HConn*>SSL_get_app_data(ssl)
    cdef const char* name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name)
    cdef char low[256]
    cdef int n
    cdef RHost* e = NULL
    cdef RTable* t
    if c == NULL:
        return SSL_TLSEXT_ERR_ALERT_FATAL
    t = (<HttpWorker*>c.hw).table
    if name != NULL:
        n = lower_host(name, <int>strlen(name), low)
        e = named_host(t, low, n)
    if e != NULL and e.ctx != NULL:
        SSL_set_SSL_CTX(ssl, e.ctx)
        return SSL_TLSEXT_ERR_OK
    if t != NULL and t.default_ctx != NULL:
        SSL_set_SSL_CTX(ssl, t.default_ctx)
        return SSL_TLSEXT_ERR_OK
    return SSL_TLSEXT_ERR_ALERT_FATAL


cdef int sni_probe(SSL* ssl, int* alert, void* arg) noexcept nogil:
    """The probe's servername callback: note the name, end the handshake."""
    cdef HConn* c = <HConn*>SSL_get_app_data(ssl)
    cdef const char* name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name)
    if c != NULL and name != NULL:
        c.sni_len = lower_host(name, <int>strlen(name), c.sni)
    if c != NULL:
        c.sni_done = 1
    return SSL_TLSEXT_ERR_ALERT_FATAL


cdef extern from "<string.h>" nogil:
    size_t strlen(const char* s)


cdef int lower_host(const char* name, int n, char* out) noexcept nogil:
    """``name`` in lower case into ``out`` (256 bytes), without a ``:port`` or a final dot."""
    cdef int i, m = 0
    cdef char ch
    if n > 0 and name[0] == 91:  # '[': an IPv6 literal keeps its colons
        for i in range(n if n < 255 else 255):
            out[i] = name[i]
            if name[i] == 93:
                return i + 1
        return 0
    for i in range(n if n < 255 else 255):
        ch = name[i]
        if ch == 58:  # ':'
            break
        if 65 <= ch <= 90:
            ch = ch + 32
        out[m] = ch
        m += 1
    if m > 0 and out[m - 1] == 46:
        m -= 1
    return m


# ---------------------------------------------------------------------------------------------
# Connections
# ---------------------------------------------------------------------------------------------

cdef enum:
    MAX_HEADERS = 100
    HEAD_SLACK = 2048    # room for the headers the proxy adds to a head

cdef enum:
    H_HEAD = 0           # reading a request head
    H_CONNECT = 1        # waiting for a backend connection
    H_EXCHANGE = 2       # request up, response down
    H_TUNNEL = 3         # passthrough: bytes relayed both ways unread
    H_HANDSHAKE = 4      # TLS handshake with the client
    H_PEEK = 5           # reading the ClientHello's server name (passthrough routes exist)
    H_LINGER = 6         # answered and shut for writing: what the client still sends is read
                         # and dropped until it closes, so that no reset destroys the answer

cdef enum:
    B_CONNECTING = 0
    B_TLS = 1
    B_BUSY = 2
    B_IDLE = 3

# counters of the HTTP data path, summed by Engine.http_stats()
cdef enum:
    HC_REQUESTS = 0
    HC_RESPONSES = 1
    HC_NOT_FOUND = 2
    HC_UNAVAILABLE = 3
    HC_BAD_REQUEST = 4
    HC_TOO_LARGE = 5
    HC_REDIRECTS = 6
    HC_BACKEND_CONNECTS = 7
    HC_BACKEND_REUSES = 8
    HC_RETRIES = 9
    HC_BAD_GATEWAY = 10
    HC_TIMEOUTS = 11
    HC_TLS_HANDSHAKES = 12
    HC_TLS_FAILURES = 13
    HC_PASSTHROUGH = 14
    HC_CLIENTS = 15
    HC_TLS_ABORTED = 16
    HC_BACKEND_TLS_FAILURES = 17
    HC_N = 18

HTTP_COUNTERS = (
    "requests", "responses", "not_found", "unavailable", "bad_requests", "too_large",
    "redirects", "backend_connects", "backend_reuses", "retries", "bad_gateway", "timeouts",
    "tls_handshakes", "tls_failures", "passthrough", "clients", "tls_aborted",
    "backend_tls_failures",
)


cdef struct HttpListen:
    int https
    int port             # this listener's port (X-Forwarded-Port)
    int redirect_port    # where insecureEdgeTerminationPolicy Redirect sends (the HTTPS port)
    ct_key side          # the listener's side of a connection's 5-tuple (hash_key five_tuple)
    SSL_CTX* ctx         # an HTTPS listener's context (its servername callback picks the cert)
    RouteShared* routes


cdef struct HttpConfig:
    int buffer_size      # bytes of each buffer; a request or response head must fit in one
    long long max_body   # request body bytes allowed (0: no limit)
    double header_timeout
    double keepalive_timeout
    double pool_idle_timeout
    int pool_max_idle    # idle backend connections a worker keeps


cdef struct HBack:
    int kind             # K_HBACKEND
    int fd
    int state
    int ready
    int reused
    int eof
    unsigned long long connect_iter
    Endpoint* ep         # one reference
    SSL* ssl             # reencrypt, else NULL
    SSL_CTX* ctx         # the context it was made with (the pool's key with ep)
    HConn* owner
    double since         # connect started, or idle since
    char* buf
    int len
    int off
    HBack* next          # the pool bucket's chain
    HBack* prev
    HBack* next_dead


cdef struct HConn:
    int kind             # K_HCLIENT
    int fd
    int closed
    int state
    int ready
    int eof
    void* hw             # the worker's HttpWorker
    Listener* listener
    HttpListen* hl
    sockaddr_storage client
    char client_ip[48]
    int client_ip_len
    SSL* ssl
    char sni[256]
    int sni_len
    int sni_done
    RTable* table        # a reference, while a request is routed on it
    RRule* rule
    Service* svc         # the service of the current request (borrowed from ``table``)
    const char* verify_host  # reencrypt: the name its pod's certificate must carry (borrowed)
    Endpoint* picked     # one reference and one live connection (ep_release)
    HBack* b
    Endpoint* tried[8]
    int tries
    char* ibuf           # bytes from the client
    int ilen
    int ioff             # consumed up to here
    char* ubuf           # bytes for the backend: the rewritten head, then the body
    int ulen
    int uoff
    char* dbuf           # bytes for the client
    int dlen
    int doff
    long long req_left   # request body bytes to pass; -1: chunked
    phr_chunked_decoder req_chunks
    int req_done
    int replayable       # the whole request is still in ubuf: another connection can take it
    int sent             # bytes of the request went to a backend
    int fresh            # a kept connection failed under this request: open new ones
    int up_shut          # passthrough: the FIN of each direction was passed on
    int down_shut
    int keep             # the client's connection stays open after this response
    int minor
    int is_head
    int local            # the proxy answers this request itself
    int resp_state       # 0: head, 1: body, 2: done
    long long resp_left  # body bytes; -1: chunked; -2: until the backend closes
    phr_chunked_decoder resp_chunks
    int resp_keep
    int got_response     # a response byte came for this request
    double last_active
    double head_started
    double awaiting
    HConn* prev
    HConn* next
    HConn* next_dead


cdef struct HttpWorker:
    RouteShared* routes
    RTable* table
    int gen
    HttpConfig* cfg
    HConn* conns
    HConn* dead
    HConn* spare
    int nspare
    HBack** pool
    int npool
    int idle
    HBack* dead_backs
    char* bufs           # free buffers (each starts with the next one's pointer)
    int nbufs
    char* scratch
    uint64_t rng
    SSL_CTX* probe_ctx
    phr_header headers[100]
    unsigned long long counters[18]


cdef inline uint64_t next_random(HttpWorker* hw) noexcept nogil:
    """xorshift64*: the weighted choice between a route's services."""
    hw.rng ^= hw.rng >> 12
    hw.rng ^= hw.rng << 25
    hw.rng ^= hw.rng >> 27
    return hw.rng * 2685821657736338717ULL


cdef void refresh_table(HttpWorker* hw) noexcept nogil:
    """Take the newest routing table (once per loop round when it changed)."""
    cdef RTable* old
    if lb_atomic_load(&hw.routes.gen) == hw.gen:
        return
    pthread_mutex_lock(&hw.routes.lock)
    old = hw.table
    hw.table = hw.routes.table
    if hw.table != NULL:
        lb_atomic_add(&hw.table.refs, 1)
    hw.gen = hw.routes.gen
    pthread_mutex_unlock(&hw.routes.lock)
    table_decref(old)


cdef char* buf_get(HttpWorker* hw) noexcept nogil:
    cdef char* b = hw.bufs
    if b != NULL:
        hw.bufs = (<char**>b)[0]
        hw.nbufs -= 1
        return b
    return <char*>malloc(<size_t>hw.cfg.buffer_size + HEAD_SLACK)


cdef void buf_put(HttpWorker* hw, char* b) noexcept nogil:
    if b == NULL:
        return
    if hw.nbufs < 256:
        (<char**>b)[0] = hw.bufs
        hw.bufs = b
        hw.nbufs += 1
    else:
        free(b)


# -- reading and writing, plain or TLS ----------------------------------------------------------

# OpenSSL reads and writes a connection's socket through this BIO (not a socket BIO): it marks
# the connection's read readiness as the plain path does, so a read shorter than asked (the
# socket is drained) is not followed by a read that can only say EAGAIN; with read-ahead on,
# one recv takes all the records there are.

cdef inline int* sock_ready(void* owner) noexcept nogil:
    if (<int*>owner)[0] == K_HCLIENT:
        return &(<HConn*>owner).ready
    return &(<HBack*>owner).ready


cdef inline int sock_fd(void* owner) noexcept nogil:
    return (<int*>owner)[1]  # HConn and HBack both start with kind, fd


cdef int sock_bio_read(BIO* bio, char* buf, int n) noexcept nogil:
    cdef void* owner = BIO_get_data(bio)
    cdef int* ready = sock_ready(owner)
    cdef ssize_t r
    BIO_clear_retry_flags(bio)
    if n <= 0:
        return 0
    r = recv(sock_fd(owner), buf, <size_t>n, MSG_DONTWAIT)
    if r > 0:
        if r < n and ready[0] == READABLE:
            ready[0] = DRAINED
        return <int>r
    if r < 0 and errno == EAGAIN:
        ready[0] = DRAINED
        BIO_set_retry_read(bio)
    return <int>r


cdef int sock_bio_write(BIO* bio, const char* buf, int n) noexcept nogil:
    cdef ssize_t r
    BIO_clear_retry_flags(bio)
    r = send(sock_fd(BIO_get_data(bio)), buf, <size_t>n, MSG_NOSIGNAL | MSG_DONTWAIT)
    if r < 0 and errno == EAGAIN:
        BIO_set_retry_write(bio)
    return <int>r


cdef long sock_bio_ctrl(BIO* bio, int cmd, long num, void* ptr) noexcept nogil:
    return 1 if cmd == BIO_CTRL_FLUSH else 0


cdef int sock_bio_create(BIO* bio) noexcept nogil:
    BIO_set_init(bio, 1)
    return 1


cdef BIO_METHOD* make_sock_bio() noexcept nogil:
    cdef BIO_METHOD* m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK,
                                      "lbcore socket")
    if m != NULL:
        BIO_meth_set_read(m, sock_bio_read)
        BIO_meth_set_write(m, sock_bio_write)
        BIO_meth_set_ctrl(m, sock_bio_ctrl)
        BIO_meth_set_create(m, sock_bio_create)
    return m


cdef BIO_METHOD* SOCK_BIO = make_sock_bio()


cdef bint ssl_attach(SSL* ssl, void* owner) noexcept nogil:
    """Give ``ssl`` the socket of ``owner`` (an HConn or HBack) through the socket BIO."""
    cdef BIO* bio
    if ssl == NULL or SOCK_BIO == NULL:
        return False
    bio = BIO_new(SOCK_BIO)
    if bio == NULL:
        return False
    BIO_set_data(bio, owner)
    SSL_set_bio(ssl, bio, bio)  # one reference, for both directions
    return True


cdef ssize_t io_recv(int fd, SSL* ssl, int* ready, char* buf, int n) noexcept nogil:
    """Bytes read (> 0), 0 at the end of the stream, -1 when nothing is there now, -2 on an
    error. A short plain read leaves the socket drained (edge-triggered epoll brings more)."""
    cdef ssize_t r
    cdef int e
    if n <= 0:
        return -1
    if ssl != NULL:
        if ready[0] == DRAINED and not SSL_has_pending(ssl):
            return -1
        r = SSL_read(ssl, buf, n)
        if r > 0:
            return r
        e = SSL_get_error(ssl, <int>r)
        ERR_clear_error()
        if e == SSL_ERROR_WANT_READ or e == SSL_ERROR_WANT_WRITE:
            ready[0] = DRAINED
            return -1
        return 0 if e == SSL_ERROR_ZERO_RETURN else -2
    if ready[0] == DRAINED:
        return -1
    r = recv(fd, buf, <size_t>n, MSG_DONTWAIT)
    if r > 0:
        if r < n and ready[0] == READABLE:
            ready[0] = DRAINED
        return r
    if r == 0:
        return 0
    if errno == EAGAIN:
        ready[0] = DRAINED
        return -1
    return -2


cdef ssize_t io_send(int fd, SSL* ssl, const char* buf, int n) noexcept nogil:
    """Bytes written (0 when the socket is full), -1 on an error."""
    cdef ssize_t r
    cdef int e
    if ssl != NULL:
        r = SSL_write(ssl, buf, n)
        if r > 0:
            return r
        e = SSL_get_error(ssl, <int>r)
        ERR_clear_error()
        return 0 if e == SSL_ERROR_WANT_READ or e == SSL_ERROR_WANT_WRITE else -1
    r = send(fd, buf, <size_t>n, MSG_NOSIGNAL | MSG_DONTWAIT)
    if r >= 0:
        return r
    return 0 if errno == EAGAIN else -1


# -- the pool of idle backend connections -----------------------------------------------------

cdef inline int pool_bucket(HttpWorker* hw, Endpoint* ep, SSL_CTX* ctx) noexcept nogil:
    return <int>(hash_u64(<uint64_t><uintptr_t>ep ^ (<uint64_t><uintptr_t>ctx << 1))
                 & <uint64_t>(hw.npool - 1))


cdef void pool_unlink(HttpWorker* hw, HBack* b) noexcept nogil:
    if b.prev != NULL:
        b.prev.next = b.next
    else:
        hw.pool[pool_bucket(hw, b.ep, b.ctx)] = b.next
    if b.next != NULL:
        b.next.prev = b.prev
    b.next = NULL
    b.prev = NULL
    hw.idle -= 1


cdef void back_close(HttpWorker* hw, Worker* w, HBack* b) noexcept nogil:
    if b.fd < 0:
        return
    if b.state == B_IDLE:
        pool_unlink(hw, b)
    if b.ssl != NULL:
        SSL_free(b.ssl)
        b.ssl = NULL
    if b.ctx != NULL:
        SSL_CTX_free(b.ctx)
        b.ctx = NULL
    close(b.fd)
    b.fd = -1
    b.owner = NULL
    if b.ep != NULL:
        ep_decref(b.ep)
        b.ep = NULL
    b.next_dead = hw.dead_backs
    hw.dead_backs = b


cdef HBack* pool_take(HttpWorker* hw, Endpoint* ep, SSL_CTX* ctx) noexcept nogil:
    cdef HBack* b = hw.pool[pool_bucket(hw, ep, ctx)]
    while b != NULL:
        if b.ep == ep and b.ctx == ctx:
            pool_unlink(hw, b)
            return b
        b = b.next
    return NULL


cdef void pool_put(HttpWorker* hw, Worker* w, HBack* b) noexcept nogil:
    cdef int k
    if hw.idle >= hw.cfg.pool_max_idle or lb_atomic_load(&b.ep.removed) or b.ep.slot < 0:
        b.state = B_BUSY
        back_close(hw, w, b)
        return
    b.state = B_IDLE
    b.owner = NULL
    b.since = w.now
    b.len = 0
    b.off = 0
    k = pool_bucket(hw, b.ep, b.ctx)
    b.prev = NULL
    b.next = hw.pool[k]
    if b.next != NULL:
        b.next.prev = b
    hw.pool[k] = b
    hw.idle += 1


# -- the client connection's life -------------------------------------------------------------

cdef void request_release(HttpWorker* hw, HConn* c) noexcept nogil:
    """Give back what the current request holds: its endpoint's live count, its table."""
    if c.picked != NULL:
        ep_release(c.svc, c.picked)
        c.picked = NULL
    c.svc = NULL
    c.verify_host = NULL
    c.rule = NULL
    if c.table != NULL:
        table_decref(c.table)
        c.table = NULL


cdef void hconn_close(HttpWorker* hw, Worker* w, HConn* c) noexcept nogil:
    cdef Listener* l = c.listener
    if c.closed:
        return
    c.closed = 1
    if c.b != NULL:
        c.b.state = B_BUSY
        back_close(hw, w, c.b)
        c.b = NULL
    request_release(hw, c)
    if c.ssl != NULL:
        if c.state != H_HANDSHAKE:
            SSL_shutdown(c.ssl)
        ERR_clear_error()
        SSL_free(c.ssl)
        c.ssl = NULL
    close(c.fd)
    buf_put(hw, c.ubuf)
    buf_put(hw, c.dbuf)
    c.ubuf = NULL
    c.dbuf = NULL
    if c.prev != NULL:
        c.prev.next = c.next
    else:
        hw.conns = c.next
    if c.next != NULL:
        c.next.prev = c.prev
    c.next_dead = hw.dead
    hw.dead = c
    w.counters[C_CLOSED] += 1
    lb_atomic_add(&l.conns, -1)
    listener_decref(l)


cdef int append(char* out, int pos, int cap, const char* s, int n) noexcept nogil:
    """``s`` appended at ``pos``; -1 once the head no longer fits."""
    if pos < 0 or pos + n > cap:
        return -1
    memcpy(out + pos, s, n)
    return pos + n


cdef int append_int(char* out, int pos, int cap, long long v) noexcept nogil:
    cdef char tmp[24]
    cdef int n = 0, i
    if v == 0:
        return append(out, pos, cap, "0", 1)
    while v > 0 and n < 24:
        tmp[n] = <char>(48 + v % 10)
        v //= 10
        n += 1
    if pos < 0 or pos + n > cap:
        return -1
    for i in range(n):
        out[pos + i] = tmp[n - 1 - i]
    return pos + n


cdef const char* reason(int status) noexcept nogil:
    if status == 302:
        return "Found"
    if status == 400:
        return "Bad Request"
    if status == 404:
        return "Not Found"
    if status == 408:
        return "Request Timeout"
    if status == 413:
        return "Content Too Large"
    if status == 431:
        return "Request Header Fields Too Large"
    if status == 501:
        return "Not Implemented"
    if status == 502:
        return "Bad Gateway"
    if status == 503:
        return "Service Unavailable"
    return "Gateway Timeout"


cdef void answer(HttpWorker* hw, HConn* c, int status, const char* body,
                 const char* location, int location_len) noexcept nogil:
    """The proxy answers the current request itself (the response is then done)."""
    cdef const char* why = reason(status)
    cdef int pos = 0, cap = hw.cfg.buffer_size + HEAD_SLACK
    cdef int blen = <int>strlen(body)
    if c.dbuf == NULL:
        c.dbuf = buf_get(hw)
        if c.dbuf == NULL:
            c.keep = 0
            c.local = 1
            c.resp_state = 2
            return
    pos = append(c.dbuf, pos, cap, "HTTP/1.1 ", 9)
    pos = append_int(c.dbuf, pos, cap, status)
    pos = append(c.dbuf, pos, cap, " ", 1)
    pos = append(c.dbuf, pos, cap, why, <int>strlen(why))
    pos = append(c.dbuf, pos, cap, "\r\ncontent-type: text/plain\r\ncache-control: no-cache\r\n", 53)
    if location != NULL:
        pos = append(c.dbuf, pos, cap, "location: ", 10)
        pos = append(c.dbuf, pos, cap, location, location_len)
        pos = append(c.dbuf, pos, cap, "\r\n", 2)
    if not c.req_done:
        c.keep = 0  # the request's body is not read: the connection cannot carry another
    if not c.keep:
        pos = append(c.dbuf, pos, cap, "connection: close\r\n", 19)
    pos = append(c.dbuf, pos, cap, "content-length: ", 16)
    pos = append_int(c.dbuf, pos, cap, blen)
    pos = append(c.dbuf, pos, cap, "\r\n\r\n", 4)
    if not c.is_head:
        pos = append(c.dbuf, pos, cap, body, blen)
    c.dlen = pos if pos > 0 else 0
    c.doff = 0
    c.local = 1
    c.resp_state = 2
    c.state = H_EXCHANGE
    if status == 404:
        hw.counters[HC_NOT_FOUND] += 1
    elif status == 503:
        hw.counters[HC_UNAVAILABLE] += 1
    elif status == 302:
        hw.counters[HC_REDIRECTS] += 1
    elif status == 502:
        hw.counters[HC_BAD_GATEWAY] += 1
    elif status == 504 or status == 408:
        hw.counters[HC_TIMEOUTS] += 1
    elif status == 413 or status == 431:
        hw.counters[HC_TOO_LARGE] += 1
    else:
        hw.counters[HC_BAD_REQUEST] += 1


# header names the proxy reads or rewrites
cdef enum:
    HN_OTHER = 0
    HN_HOP = 1           # hop-by-hop: not passed on
    HN_HOST = 2
    HN_CONTENT_LENGTH = 3
    HN_TRANSFER_ENCODING = 4
    HN_CONNECTION = 5
    HN_XFF = 6
    HN_FORWARDED = 7
    HN_XF_OTHER = 8      # X-Forwarded-Host/-Port/-Proto: replaced by the proxy's


cdef int header_name(const char* n, size_t len) noexcept nogil:
    if len == 4:
        return HN_HOST if strncasecmp(n, "host", 4) == 0 else HN_OTHER
    if len == 14:
        return HN_CONTENT_LENGTH if strncasecmp(n, "content-length", 14) == 0 else HN_OTHER
    if len == 17:
        if strncasecmp(n, "transfer-encoding", 17) == 0:
            return HN_TRANSFER_ENCODING
        return HN_XF_OTHER if strncasecmp(n, "x-forwarded-proto", 17) == 0 else HN_OTHER
    if len == 10:
        if strncasecmp(n, "connection", 10) == 0:
            return HN_CONNECTION
        return HN_HOP if strncasecmp(n, "keep-alive", 10) == 0 else HN_OTHER
    if len == 15:
        return HN_XFF if strncasecmp(n, "x-forwarded-for", 15) == 0 else HN_OTHER
    if len == 9:
        return HN_FORWARDED if strncasecmp(n, "forwarded", 9) == 0 else HN_OTHER
    if len == 16:
        if strncasecmp(n, "proxy-connection", 16) == 0:
            return HN_HOP
        if strncasecmp(n, "x-forwarded-host", 16) == 0 or \
                strncasecmp(n, "x-forwarded-port", 16) == 0:
            return HN_XF_OTHER
        return HN_OTHER
    if len == 7:
        return HN_HOP if strncasecmp(n, "upgrade", 7) == 0 else HN_OTHER
    if len == 2:
        return HN_HOP if strncasecmp(n, "te", 2) == 0 else HN_OTHER
    return HN_OTHER


cdef bint has_token(const char* v, size_t n, const char* token, int tn) noexcept nogil:
    """Whether the comma-separated list ``v`` holds ``token`` (case-insensitive)."""
    cdef size_t i = 0, start
    while i < n:
        while i < n and (v[i] == 32 or v[i] == 9 or v[i] == 44):
            i += 1
        start = i
        while i < n and v[i] != 44 and v[i] != 32 and v[i] != 9:
            i += 1
        if i - start == <size_t>tn and strncasecmp(v + start, token, tn) == 0:
            return True
    return False


cdef long long parse_length(const char* v, size_t n) noexcept nogil:
    """A Content-Length value; -1 when it is not one."""
    cdef long long x = 0
    cdef size_t i
    if n == 0 or n > 18:
        return -1
    for i in range(n):
        if v[i] < 48 or v[i] > 57:
            return -1
        x = x * 10 + (v[i] - 48)
    return x


cdef RRule* host_rule(RHost* e, bint https, const char* path, int plen) noexcept nogil:
    cdef int i
    cdef RRule* rules = e.https if https else e.http
    cdef int n = e.nhttps if https else e.nhttp
    for i in range(n):
        if path_matches(&rules[i], path, plen):
            return &rules[i]
    return NULL


cdef RRule* choose_rule(RTable* t, bint https, const char* host, int hlen, const char* path,
                        int plen) noexcept nogil:
    """The rule serving ``path`` on ``host`` for this listener, as
    ``lbcore.model.routes.RoutingTable.lookup`` finds it: the exact host's rules, the
    wildcard's, then those of the host ""; in each, the first whose path matches."""
    cdef RHost* e
    cdef RHost* w = NULL
    cdef RRule* r
    cdef const char* dot
    if t == NULL:
        return NULL
    if hlen > 0:
        e = table_find(t, host, hlen, 0)
        if e != NULL:
            r = host_rule(e, https, path, plen)
            if r != NULL:
                return r
        dot = <const char*>memchr(host, 46, hlen)  # '.'
        if dot != NULL and dot - host + 1 < hlen:
            w = table_find(t, dot + 1, hlen - <int>(dot - host) - 1, 1)
            if w != NULL:
                r = host_rule(w, https, path, plen)
                if r != NULL:
                    return r
    if t.any != NULL:
        return host_rule(t.any, https, path, plen)
    return NULL


cdef Service* choose_service(HttpWorker* hw, RRule* r, const char** verify_host) noexcept nogil:
    """A service of the rule by weight (``to`` and ``alternateBackends``), among those with an
    endpoint to pick; NULL when none has. ``verify_host``: that backend's name to verify."""
    cdef int i, total = 0
    cdef long long x
    for i in range(r.nbackends):
        if r.backends[i].weight > 0 and lb_atomic_load(&r.backends[i].svc.npicks) > 0:
            total += r.backends[i].weight
    if total == 0:
        return NULL
    x = <long long>(next_random(hw) % <uint64_t>total)
    for i in range(r.nbackends):
        if r.backends[i].weight > 0 and lb_atomic_load(&r.backends[i].svc.npicks) > 0:
            x -= r.backends[i].weight
            if x < 0:
                verify_host[0] = r.backends[i].verify_host
                return r.backends[i].svc
    return NULL


cdef int compose_request(HttpWorker* hw, HConn* c, const char* method, size_t mlen,
                         const char* path, size_t plen, size_t nh, const char* host,
                         size_t hostlen) noexcept nogil:
    """The request head for the backend in ``ubuf``: hop-by-hop headers out, X-Forwarded-*
    and Forwarded in. Its length, or -1 when it does not fit."""
    cdef int pos = 0, cap = hw.cfg.buffer_size + HEAD_SLACK
    cdef size_t i
    cdef int kind
    cdef char* out = c.ubuf
    cdef phr_header* h
    cdef const char* xff = NULL
    cdef size_t xff_len = 0
    cdef const char* fwd = NULL
    cdef size_t fwd_len = 0
    cdef const char* proto = "https" if c.hl.https else "http"
    cdef int proto_len = 5 if c.hl.https else 4
    pos = append(out, pos, cap, method, <int>mlen)
    pos = append(out, pos, cap, " ", 1)
    pos = append(out, pos, cap, path, <int>plen)
    pos = append(out, pos, cap, " HTTP/1.1\r\n", 11)
    for i in range(nh):
        h = &hw.headers[i]
        kind = header_name(h.name, h.name_len)
        if kind == HN_HOP or kind == HN_CONNECTION or kind == HN_XF_OTHER:
            continue
        if kind == HN_XFF:
            xff, xff_len = h.value, h.value_len
            continue
        if kind == HN_FORWARDED:
            fwd, fwd_len = h.value, h.value_len
            continue
        pos = append(out, pos, cap, h.name, <int>h.name_len)
        pos = append(out, pos, cap, ": ", 2)
        pos = append(out, pos, cap, h.value, <int>h.value_len)
        pos = append(out, pos, cap, "\r\n", 2)
    pos = append(out, pos, cap, "x-forwarded-for: ", 17)
    if xff != NULL:
        pos = append(out, pos, cap, xff, <int>xff_len)
        pos = append(out, pos, cap, ", ", 2)
    pos = append(out, pos, cap, c.client_ip, c.client_ip_len)
    pos = append(out, pos, cap, "\r\nx-forwarded-host: ", 20)
    pos = append(out, pos, cap, host, <int>hostlen)
    pos = append(out, pos, cap, "\r\nx-forwarded-port: ", 20)
    pos = append_int(out, pos, cap, c.hl.port)
    pos = append(out, pos, cap, "\r\nx-forwarded-proto: ", 21)
    pos = append(out, pos, cap, proto, proto_len)
    pos = append(out, pos, cap, "\r\nforwarded: ", 13)
    if fwd != NULL:
        pos = append(out, pos, cap, fwd, <int>fwd_len)
        pos = append(out, pos, cap, ", ", 2)
    pos = append(out, pos, cap, "for=", 4)
    if c.client.ss_family == AF_INET6:
        pos = append(out, pos, cap, "\"[", 2)
        pos = append(out, pos, cap, c.client_ip, c.client_ip_len)
        pos = append(out, pos, cap, "]\"", 2)
    else:
        pos = append(out, pos, cap, c.client_ip, c.client_ip_len)
    pos = append(out, pos, cap, ";host=\"", 7)
    pos = append(out, pos, cap, host, <int>hostlen)
    pos = append(out, pos, cap, "\";proto=", 8)
    pos = append(out, pos, cap, proto, proto_len)
    pos = append(out, pos, cap, "\r\n\r\n", 4)
    return pos


cdef int start_request(HttpWorker* hw, Worker* w, HConn* c, int head_len, const char* method,
                       size_t mlen, const char* path, size_t plen, int minor,
                       size_t nh) noexcept nogil:
    """A request head was parsed (``hw.headers``): route it and start its exchange. 1 when the
    connection made progress."""
    cdef size_t i
    cdef int kind, n, pos
    cdef const char* host = NULL
    cdef size_t hostlen = 0
    cdef long long clen = -1
    cdef int chunked = 0, bad = 0, conn_close = 0, conn_keep = 0
    cdef char low[256]
    cdef char loc[600]
    cdef RRule* r
    cdef int qlen
    hw.counters[HC_REQUESTS] += 1
    c.ioff += head_len
    c.minor = minor
    c.is_head = mlen == 4 and memcmp(method, "HEAD", 4) == 0
    c.req_left = 0
    c.req_done = 1
    c.local = 0
    c.resp_state = 0
    c.got_response = 0
    c.tries = 0
    c.replayable = 0
    c.sent = 0
    c.fresh = 0
    memset(&c.req_chunks, 0, sizeof(phr_chunked_decoder))
    memset(&c.resp_chunks, 0, sizeof(phr_chunked_decoder))
    c.req_chunks.consume_trailer = 1  # the message ends after its trailer section
    c.resp_chunks.consume_trailer = 1
    for i in range(nh):
        if hw.headers[i].name == NULL:  # obsolete line folding
            bad = 1
            continue
        kind = header_name(hw.headers[i].name, hw.headers[i].name_len)
        if kind == HN_HOST:
            if host != NULL:
                bad = 1
            host, hostlen = hw.headers[i].value, hw.headers[i].value_len
        elif kind == HN_CONTENT_LENGTH:
            if clen >= 0 or parse_length(hw.headers[i].value, hw.headers[i].value_len) < 0:
                bad = 1
            clen = parse_length(hw.headers[i].value, hw.headers[i].value_len)
        elif kind == HN_TRANSFER_ENCODING:
            if hw.headers[i].value_len == 7 and \
                    strncasecmp(hw.headers[i].value, "chunked", 7) == 0:
                chunked = 1
            else:
                bad = 2
        elif kind == HN_CONNECTION:
            if has_token(hw.headers[i].value, hw.headers[i].value_len, "close", 5):
                conn_close = 1
            if has_token(hw.headers[i].value, hw.headers[i].value_len, "keep-alive", 10):
                conn_keep = 1
    c.keep = (not conn_close) if minor >= 1 else conn_keep
    if chunked:
        if clen >= 0:
            bad = 1  # both framings: refused, as RFC 9112 allows (request smuggling)
        c.req_left = -1
        c.req_done = 0
    elif clen > 0:
        c.req_left = clen
        c.req_done = 0
    if bad or (minor >= 1 and host == NULL):
        c.keep = 0
        answer(hw, c, 501 if bad == 2 else 400, "bad request\n", NULL, 0)
        return 1
    if hw.cfg.max_body > 0 and clen > hw.cfg.max_body:
        c.keep = 0
        answer(hw, c, 413, "request body too large\n", NULL, 0)
        return 1
    refresh_table(hw)
    n = lower_host(host, <int>hostlen, low) if host != NULL else 0
    qlen = 0
    while qlen < <int>plen and path[qlen] != 63 and path[qlen] != 35:  # '?', '#'
        qlen += 1
    r = choose_rule(hw.table, c.hl.https, low, n, path, qlen)
    if r == NULL:
        answer(hw, c, 404, "no route for this host and path\n", NULL, 0)
        return 1
    if r.redirect:
        pos = append(loc, 0, 600, "https://", 8)
        pos = append(loc, pos, 600, low, n)
        if c.hl.redirect_port != 443:
            pos = append(loc, pos, 600, ":", 1)
            pos = append_int(loc, pos, 600, c.hl.redirect_port)
        pos = append(loc, pos, 600, path, <int>plen)
        if pos < 0:
            c.keep = 0
            answer(hw, c, 431, "request target too long\n", NULL, 0)
        else:
            answer(hw, c, 302, "moved to https\n", loc, pos)
        return 1
    c.table = hw.table
    lb_atomic_add(&c.table.refs, 1)
    c.rule = r
    if c.ubuf == NULL:
        c.ubuf = buf_get(hw)
    if c.dbuf == NULL:
        c.dbuf = buf_get(hw)
    if c.ubuf == NULL or c.dbuf == NULL:
        c.keep = 0
        answer(hw, c, 503, "out of memory\n", NULL, 0)
        return 1
    c.ulen = compose_request(hw, c, method, mlen, path, plen, nh, host, hostlen)
    c.uoff = 0
    c.dlen = 0
    c.doff = 0
    if c.ulen < 0:
        c.keep = 0
        answer(hw, c, 431, "request head too large\n", NULL, 0)
        return 1
    # body bytes already read move behind the head while they fit: a request read whole can
    # be sent again on another connection
    move_body(hw, c)
    c.replayable = c.req_done
    c.svc = choose_service(hw, r, &c.verify_host)
    if c.svc == NULL:
        answer(hw, c, 503, "no endpoint available for this route\n", NULL, 0)
        return 1
    c.state = H_CONNECT
    backend_for(hw, w, c)
    return 1


cdef void track_chunks(HttpWorker* hw, phr_chunked_decoder* d, const char* data, int n,
                       int* used, int* done, int* bad) noexcept nogil:
    """Follow chunked framing over ``data`` (passed on unchanged): ``used`` bytes belong to
    the message, ``done`` when its end is among them."""
    cdef size_t sz = <size_t>n
    cdef ssize_t r
    memcpy(hw.scratch, data, n)
    r = phr_decode_chunked(d, hw.scratch, &sz)
    if r == -1:
        bad[0] = 1
        used[0] = n
        return
    if r >= 0:
        done[0] = 1
        used[0] = n - <int>r
    else:
        used[0] = n


cdef void move_body(HttpWorker* hw, HConn* c) noexcept nogil:
    """Move request body bytes read with the head (or after it) into ``ubuf``, as far as the
    body goes and ``ubuf`` has room."""
    cdef int cap = hw.cfg.buffer_size + HEAD_SLACK
    cdef int avail = c.ilen - c.ioff
    cdef int room = cap - c.ulen
    cdef int n, used = 0, done = 0, bad = 0
    if c.req_done or avail <= 0 or room <= 0:
        return
    n = avail if avail < room else room
    if c.req_left >= 0:
        if n > c.req_left:
            n = <int>c.req_left
        memcpy(c.ubuf + c.ulen, c.ibuf + c.ioff, n)
        c.ulen += n
        c.ioff += n
        c.req_left -= n
        if c.req_left == 0:
            c.req_done = 1
        return
    track_chunks(hw, &c.req_chunks, c.ibuf + c.ioff, n, &used, &done, &bad)
    memcpy(c.ubuf + c.ulen, c.ibuf + c.ioff, used)
    c.ulen += used
    c.ioff += used
    if done:
        c.req_done = 1
    if bad:
        c.keep = 0
        c.req_done = 1


cdef void backend_for(HttpWorker* hw, Worker* w, HConn* c) noexcept nogil:
    """Pick an endpoint of ``c.svc`` and give the request a connection to it: an idle one from
    the pool, else a new one. Answers 503 when no endpoint can be reached."""
    cdef Endpoint* ep
    cdef HBack* b
    cdef SSL_CTX* ctx = c.rule.dest_ctx if c.rule.dest_ctx != NULL else NULL
    cdef int fd, r
    cdef epoll_event ev
    while True:
        if c.picked != NULL:
            ep_release(c.svc, c.picked)
            c.picked = NULL
        ep = service_pick(c.svc, &c.hl.side, &c.client, w.now, c.tried,
                          c.tries if c.tries < 8 else 8)
        if ep == NULL:
            answer(hw, c, 503, "no endpoint available for this route\n", NULL, 0)
            return
        c.picked = ep
        b = pool_take(hw, ep, ctx) if not c.fresh else NULL
        if b != NULL:
            hw.counters[HC_BACKEND_REUSES] += 1
            b.state = B_BUSY
            b.owner = c
            b.reused = 1
            b.len = 0
            b.off = 0
            c.b = b
            c.state = H_EXCHANGE
            c.awaiting = w.now
            return
        b = <HBack*>calloc(1, sizeof(HBack))
        if b != NULL:
            b.buf = <char*>malloc(<size_t>hw.cfg.buffer_size)
        if b == NULL or b.buf == NULL:
            if b != NULL:
                free(b)
            answer(hw, c, 503, "out of memory\n", NULL, 0)
            return
        fd = socket(ep.addr.sin6_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)
        if fd < 0:
            free(b.buf)
            free(b)
            answer(hw, c, 503, "out of sockets\n", NULL, 0)
            return
        set_nodelay(fd)
        hw.counters[HC_BACKEND_CONNECTS] += 1
        b.kind = K_HBACKEND
        b.fd = fd
        b.ep = ep
        ep_incref(ep)
        b.ctx = ctx
        if ctx != NULL:
            SSL_CTX_up_ref(ctx)  # a pool key while the connection lives: never a reused address
        b.owner = c
        b.since = w.now
        b.connect_iter = w.iter
        b.state = B_CONNECTING
        c.b = b
        c.state = H_CONNECT
        r = connect(fd, <sockaddr*>&ep.addr, ep.addrlen)
        if r == 0 or errno == EINPROGRESS:
            ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET
            ev.data.ptr = b
            epoll_ctl(w.epfd, EPOLL_CTL_ADD, fd, &ev)
            if r == 0:
                backend_opened(hw, w, c)
            return
        if not backend_lost(hw, w, c, True):
            return


cdef bint backend_lost(HttpWorker* hw, Worker* w, HConn* c, bint failed) noexcept nogil:
    """The request's backend connection failed before any answer (``failed``: it refused or
    timed out, a mark against the endpoint; else a kept connection the backend had closed).
    True when the request may be tried on another connection (the caller does it)."""
    cdef HBack* b = c.b
    cdef int reused = b.reused if b != NULL else 0
    if b != NULL:
        b.state = B_BUSY
        back_close(hw, w, b)
        c.b = NULL
    if failed and c.picked != NULL:
        w.counters[C_CONNECT_FAILED] += 1
        mark_down(w, c.svc, c.picked)
        endpoint_failed(w, c.svc, c.picked)
        if c.tries < 8:
            c.tried[c.tries] = c.picked
    c.tries += 1
    if not failed:
        c.fresh = 1
    if c.sent and not c.replayable:
        answer(hw, c, 502, "the backend closed the connection\n", NULL, 0)
        c.keep = 0
        return False
    if c.tries > w.cfg.retries + (1 if reused else 0):
        answer(hw, c, 503 if failed else 502, "no endpoint answered\n", NULL, 0)
        return False
    hw.counters[HC_RETRIES] += 1
    c.uoff = 0
    c.state = H_CONNECT
    return True


cdef void backend_opened(HttpWorker* hw, Worker* w, HConn* c) noexcept nogil:
    cdef HBack* b = c.b
    if b.ctx != NULL and b.ssl == NULL:
        b.ssl = SSL_new(b.ctx)
        if not ssl_attach(b.ssl, b) or (c.verify_host != NULL
                                        and SSL_set1_host(b.ssl, c.verify_host) != 1):
            ERR_clear_error()
            if backend_lost(hw, w, c, True):
                backend_for(hw, w, c)
            return
        SSL_set_connect_state(b.ssl)
        b.state = B_TLS
    if b.state == B_TLS:
        if not backend_handshake(hw, w, c):
            return
    b.state = B_BUSY
    c.state = H_EXCHANGE
    c.awaiting = w.now


cdef bint backend_handshake(HttpWorker* hw, Worker* w, HConn* c) noexcept nogil:
    """Advance the TLS handshake with a reencrypt endpoint: True once it is done."""
    cdef HBack* b = c.b
    cdef int r = SSL_do_handshake(b.ssl)
    cdef int e
    if r == 1:
        return True
    e = SSL_get_error(b.ssl, r)
    ERR_clear_error()
    if e == SSL_ERROR_WANT_READ or e == SSL_ERROR_WANT_WRITE:
        return False
    hw.counters[HC_BACKEND_TLS_FAILURES] += 1
    if backend_lost(hw, w, c, True):
        backend_for(hw, w, c)
    return False


cdef int compose_response(HttpWorker* hw, HConn* c, int status, const char* msg,
                          size_t msg_len, size_t nh) noexcept nogil:
    """The response head for the client in ``dbuf``; -1 when it does not fit."""
    cdef int pos = c.dlen, cap = hw.cfg.buffer_size + HEAD_SLACK
    cdef size_t i
    cdef int kind
    cdef phr_header* h
    cdef char* out = c.dbuf
    pos = append(out, pos, cap, "HTTP/1.1 ", 9)
    pos = append_int(out, pos, cap, status)
    pos = append(out, pos, cap, " ", 1)
    pos = append(out, pos, cap, msg, <int>msg_len)
    pos = append(out, pos, cap, "\r\n", 2)
    for i in range(nh):
        h = &hw.headers[i]
        if h.name == NULL:
            continue
        kind = header_name(h.name, h.name_len)
        if kind == HN_HOP or kind == HN_CONNECTION:
            continue
        pos = append(out, pos, cap, h.name, <int>h.name_len)
        pos = append(out, pos, cap, ": ", 2)
        pos = append(out, pos, cap, h.value, <int>h.value_len)
        pos = append(out, pos, cap, "\r\n", 2)
    if status >= 200:
        if not c.keep:
            pos = append(out, pos, cap, "connection: close\r\n", 19)
        elif c.minor == 0:
            pos = append(out, pos, cap, "connection: keep-alive\r\n", 24)
    pos = append(out, pos, cap, "\r\n", 2)
    return pos


cdef int read_response_head(HttpWorker* hw, Worker* w, HConn* c) noexcept nogil:
    """Parse the response head in the backend's buffer: 1 when it was handled, 0 when more
    bytes are needed, -1 when the response is malformed (answered 502)."""
    cdef HBack* b = c.b
    cdef int minor, status, r, kind, pos
    cdef const char* msg
    cdef size_t msg_len, nh = MAX_HEADERS, i
    cdef long long clen = -1
    cdef int chunked = 0, conn_close = 0, conn_keep = 0
    r = phr_parse_response(b.buf + b.off, b.len - b.off, &minor, &status, &msg, &msg_len,
                           hw.headers, &nh, 0)
    if r == -2:
        if b.len - b.off >= hw.cfg.buffer_size:
            r = -1
        else:
            if b.off > 0:
                memmove(b.buf, b.buf + b.off, b.len - b.off)
                b.len -= b.off
                b.off = 0
            return 0
    if r < 0:
        c.keep = 0
        b.state = B_BUSY
        back_close(hw, w, b)
        c.b = NULL
        c.dlen = 0
        answer(hw, c, 502, "the backend's response is malformed\n", NULL, 0)
        return -1
    b.off += r
    for i in range(nh):
        if hw.headers[i].name == NULL:
            continue
        kind = header_name(hw.headers[i].name, hw.headers[i].name_len)
        if kind == HN_CONTENT_LENGTH:
            clen = parse_length(hw.headers[i].value, hw.headers[i].value_len)
        elif kind == HN_TRANSFER_ENCODING:
            chunked = has_token(hw.headers[i].value, hw.headers[i].value_len, "chunked", 7)
        elif kind == HN_CONNECTION:
            conn_close = has_token(hw.headers[i].value, hw.headers[i].value_len, "close", 5)
            conn_keep = has_token(hw.headers[i].value, hw.headers[i].value_len,
                                  "keep-alive", 10)
    c.resp_keep = (not conn_close) if minor >= 1 else conn_keep
    if 100 <= status < 200:
        if status == 101:  # no upgrade was asked for (Upgrade is not passed on)
            c.keep = 0
            c.resp_keep = 0
        pos = compose_response(hw, c, status, msg, msg_len, nh)
        if pos >= 0:
            c.dlen = pos
        return 1  # the final response follows
    if c.is_head or status == 204 or status == 304:
        c.resp_left = 0
    elif chunked:
        c.resp_left = -1
    elif clen >= 0:
        c.resp_left = clen
    else:
        c.resp_left = -2  # until the backend closes: the client's connection ends with it
        c.keep = 0
        c.resp_keep = 0
    if not c.req_done:
        c.keep = 0  # answered before the request's body was read: no next request on it
    pos = compose_response(hw, c, status, msg, msg_len, nh)
    if pos < 0:
        c.keep = 0
        b.state = B_BUSY
        back_close(hw, w, b)
        c.b = NULL
        c.dlen = 0
        answer(hw, c, 502, "the backend's response head is too large\n", NULL, 0)
        return -1
    c.dlen = pos
    c.resp_state = 1
    if c.resp_left == 0:
        c.resp_state = 2
    hw.counters[HC_RESPONSES] += 1
    if b.ep != NULL and b.ep.failures != 0:
        lb_atomic_store(&b.ep.failures, 0)  # it answers: its run of failures ends
    return 1


cdef void take_response_body(HttpWorker* hw, HConn* c, const char* data, int n,
                             int* used) noexcept nogil:
    """Append response body bytes to ``dbuf`` (as many as the framing allows)."""
    cdef int done = 0, bad = 0
    if c.resp_left >= 0:
        if n > c.resp_left:
            n = <int>c.resp_left
        memcpy(c.dbuf + c.dlen, data, n)
        c.dlen += n
        c.resp_left -= n
        used[0] = n
        if c.resp_left == 0:
            c.resp_state = 2
        return
    if c.resp_left == -2:
        memcpy(c.dbuf + c.dlen, data, n)
        c.dlen += n
        used[0] = n
        return
    track_chunks(hw, &c.resp_chunks, data, n, used, &done, &bad)
    memcpy(c.dbuf + c.dlen, data, used[0])
    c.dlen += used[0]
    if done:
        c.resp_state = 2
    if bad:
        c.resp_state = 2
        c.keep = 0
        c.resp_keep = 0


cdef int exchange(HttpWorker* hw, Worker* w, HConn* c) noexcept nogil:
    """Move the current request up and its response down as far as the sockets allow: 1 when
    something moved (call again), 0 when both sides wait for events."""
    cdef HBack* b = c.b
    cdef ssize_t r
    cdef int cap = hw.cfg.buffer_size + HEAD_SLACK
    cdef int moved = 0, used, n, done, bad
    # 1. to the client (a response head waits for the body bytes already read behind it, so
    # that a response that fits goes out in one write: one TLS record)
    if c.dlen > c.doff and not (c.resp_state == 1 and b != NULL and b.len > b.off
                                and c.dlen < cap):
        r = io_send(c.fd, c.ssl, c.dbuf + c.doff, c.dlen - c.doff)
        if r < 0:
            hconn_close(hw, w, c)
            return 0
        if r > 0:
            c.doff += <int>r
            c.last_active = w.now
            moved = 1
        if c.doff == c.dlen:
            c.doff = 0
            c.dlen = 0
        else:
            return moved  # the client is slow: read nothing more for it
    if c.resp_state == 2:
        if b != NULL and not c.req_done:
            # answered early: the rest of the request is not read, neither connection is kept
            c.keep = 0
            c.resp_keep = 0
        if not c.req_done and c.local:
            c.keep = 0
        finish_request(hw, w, c)
        return 1
    if b == NULL:
        return moved
    # 2. to the backend
    if c.ulen > c.uoff:
        r = io_send(b.fd, b.ssl, c.ubuf + c.uoff, c.ulen - c.uoff)
        if r < 0:
            if not c.got_response and backend_lost(hw, w, c, False):
                backend_for(hw, w, c)
            else:
                hconn_close(hw, w, c)
            return 1
        if r > 0:
            c.uoff += <int>r
            c.sent = 1
            c.awaiting = w.now
            moved = 1
    if c.ulen == c.uoff and not c.req_done:
        if not c.replayable:
            c.ulen = 0
            c.uoff = 0
        if c.ilen > c.ioff:
            move_body(hw, c)
            moved = 1
        else:
            c.ioff = 0
            c.ilen = 0
            r = io_recv(c.fd, c.ssl, &c.ready, c.ubuf + c.ulen,
                        <int>(cap - c.ulen if c.req_left < 0 or c.req_left > cap - c.ulen
                              else c.req_left))
            if r > 0:
                moved = 1
                c.last_active = w.now
                if c.req_left >= 0:
                    c.ulen += <int>r
                    c.req_left -= r
                    if c.req_left == 0:
                        c.req_done = 1
                else:
                    used = 0
                    done = 0
                    bad = 0
                    track_chunks(hw, &c.req_chunks, c.ubuf + c.ulen, <int>r, &used, &done, &bad)
                    if used < r:  # bytes of the next request: back to the client's buffer
                        memcpy(c.ibuf, c.ubuf + c.ulen + used, <int>r - used)
                        c.ilen = <int>r - used
                    c.ulen += used
                    if done or bad:
                        c.req_done = 1
                    if bad:
                        c.keep = 0
            elif r == 0 or r == -2:
                hconn_close(hw, w, c)
                return 0
    # 3. from the backend
    if c.resp_state == 0:
        if b.len - b.off > 0:
            n = read_response_head(hw, w, c)
            if n != 0:
                return 1
        if b.state == B_BUSY and b.len < hw.cfg.buffer_size:
            r = io_recv(b.fd, b.ssl, &b.ready, b.buf + b.len, hw.cfg.buffer_size - b.len)
            if r > 0:
                b.len += <int>r
                c.got_response = 1
                return 1
            if r == 0 or r == -2:
                if c.got_response:
                    c.keep = 0
                    b.state = B_BUSY
                    back_close(hw, w, b)
                    c.b = NULL
                    answer(hw, c, 502, "the backend closed the connection\n", NULL, 0)
                elif backend_lost(hw, w, c, False):
                    backend_for(hw, w, c)
                return 1
        return moved
    # the body
    if b.len > b.off:
        used = 0
        n = b.len - b.off
        if n > cap - c.dlen:
            n = cap - c.dlen
        take_response_body(hw, c, b.buf + b.off, n, &used)
        b.off += used
        if b.off == b.len:
            b.off = 0
            b.len = 0
        elif c.resp_state == 2:
            c.resp_keep = 0  # bytes beyond the response: the connection is not reusable
        return 1
    if c.dlen < cap:
        n = cap - c.dlen
        if c.resp_left >= 0 and c.resp_left < n:
            n = <int>c.resp_left
        r = io_recv(b.fd, b.ssl, &b.ready, c.dbuf + c.dlen, n)
        if r > 0:
            used = 0
            if c.resp_left == -1:
                # chunked: the bytes were read into place; follow the framing over them
                done = 0
                bad = 0
                track_chunks(hw, &c.resp_chunks, c.dbuf + c.dlen, <int>r, &used, &done, &bad)
                c.dlen += used
                if done or bad:
                    c.resp_state = 2
                if used < r or bad:
                    c.resp_keep = 0
                    c.keep = c.keep and not bad
            else:
                c.dlen += <int>r
                if c.resp_left >= 0:
                    c.resp_left -= r
                    if c.resp_left == 0:
                        c.resp_state = 2
            return 1
        if r == 0 or r == -2:
            if c.resp_left == -2 and r == 0:
                c.resp_state = 2
            else:
                c.keep = 0
            c.resp_keep = 0
            b.eof = 1
            if c.resp_state != 2:
                # cut short: pass on what came, then end the client's connection
                c.resp_state = 2
            return 1
    return moved


cdef void finish_request(HttpWorker* hw, Worker* w, HConn* c) noexcept nogil:
    """The response went out whole: keep or close each side, then the next request."""
    cdef HBack* b = c.b
    if b != NULL:
        c.b = NULL
        if c.resp_keep and c.req_done and not b.eof and b.len == b.off:
            pool_put(hw, w, b)
        else:
            b.state = B_BUSY
            back_close(hw, w, b)
    request_release(hw, c)
    if not c.keep:
        if c.local and c.ssl == NULL:
            shutdown(c.fd, SHUT_WR)
            c.state = H_LINGER
            c.last_active = w.now
            return
        hconn_close(hw, w, c)
        return
    # the next request: what the client sent behind this one moves to the front
    if c.ioff > 0:
        if c.ilen > c.ioff:
            memmove(c.ibuf, c.ibuf + c.ioff, c.ilen - c.ioff)
        c.ilen -= c.ioff
        c.ioff = 0
    c.ulen = 0
    c.uoff = 0
    c.dlen = 0
    c.doff = 0
    c.state = H_HEAD
    c.local = 0
    c.resp_state = 0
    c.last_active = w.now
    c.head_started = w.now
    # keep the buffers while more requests are already here; else give them back
    if c.ilen == 0:
        buf_put(hw, c.ubuf)
        buf_put(hw, c.dbuf)
        c.ubuf = NULL
        c.dbuf = NULL


cdef int read_head(HttpWorker* hw, Worker* w, HConn* c) noexcept nogil:
    """Read and parse a request head: 1 on progress, 0 when waiting for bytes."""
    cdef const char* method
    cdef const char* path
    cdef size_t mlen, plen, nh
    cdef int minor, r
    cdef ssize_t n
    while True:
        if c.ilen > c.ioff:
            nh = MAX_HEADERS
            r = phr_parse_request(c.ibuf + c.ioff, c.ilen - c.ioff, &method, &mlen, &path,
                                  &plen, &minor, hw.headers, &nh, 0)
            if r > 0:
                return start_request(hw, w, c, r, method, mlen, path, plen, minor, nh)
            if r == -1:
                c.keep = 0
                c.req_done = 1
                c.is_head = 0
                answer(hw, c, 400, "bad request\n", NULL, 0)
                return 1
            if c.ilen - c.ioff >= hw.cfg.buffer_size:
                c.keep = 0
                c.req_done = 1
                c.is_head = 0
                answer(hw, c, 431, "request head too large\n", NULL, 0)
                return 1
            if c.ioff > 0:
                memmove(c.ibuf, c.ibuf + c.ioff, c.ilen - c.ioff)
                c.ilen -= c.ioff
                c.ioff = 0
        n = io_recv(c.fd, c.ssl, &c.ready, c.ibuf + c.ilen, hw.cfg.buffer_size - c.ilen)
        if n > 0:
            if c.ilen == 0:
                c.head_started = w.now
            c.ilen += <int>n
            c.last_active = w.now
            continue
        if n == -1:
            return 0
        hconn_close(hw, w, c)
        return 0


cdef inline bint peer_went_away(int e) noexcept nogil:
    """Whether a failed handshake's error (SSL_get_error, before ERR_clear_error) is the peer
    closing or resetting its connection, not a TLS failure: the end of the stream (OpenSSL 3
    reports it as an unexpected EOF) or a socket error."""
    if e == SSL_ERROR_SYSCALL or e == SSL_ERROR_ZERO_RETURN:
        return True
    return e == SSL_ERROR_SSL and \
        ERR_GET_REASON(ERR_peek_error()) == SSL_R_UNEXPECTED_EOF_WHILE_READING


cdef int client_handshake(HttpWorker* hw, Worker* w, HConn* c) noexcept nogil:
    cdef int r = SSL_do_handshake(c.ssl)
    cdef int e
    if r == 1:
        hw.counters[HC_TLS_HANDSHAKES] += 1
        c.state = H_HEAD
        c.ready = READABLE  # OpenSSL may hold bytes of the first request already
        return 1
    e = SSL_get_error(c.ssl, r)
    if e == SSL_ERROR_WANT_READ or e == SSL_ERROR_WANT_WRITE:
        ERR_clear_error()
        return 0
    hw.counters[HC_TLS_ABORTED if peer_went_away(e) else HC_TLS_FAILURES] += 1
    ERR_clear_error()
    hconn_close(hw, w, c)
    return 0


cdef int start_tls(HttpWorker* hw, Worker* w, HConn* c) noexcept nogil:
    c.ssl = SSL_new(c.hl.ctx)
    if not ssl_attach(c.ssl, c):
        ERR_clear_error()
        hconn_close(hw, w, c)
        return 0
    SSL_set_app_data(c.ssl, c)
    SSL_set_accept_state(c.ssl)
    c.state = H_HANDSHAKE
    return 1


cdef int peek_hello(HttpWorker* hw, Worker* w, HConn* c) noexcept nogil:
    """Read the ClientHello without taking it from the socket and let OpenSSL find its server
    name: a passthrough host's stream is relayed unread, any other goes on to a handshake."""
    cdef ssize_t n
    cdef SSL* probe
    cdef BIO* rbio
    cdef BIO* wbio
    cdef RHost* e
    cdef RRule* r
    n = recv(c.fd, c.ibuf, <size_t>hw.cfg.buffer_size, MSG_PEEK | MSG_DONTWAIT)
    if n == 0 or (n < 0 and errno != EAGAIN):
        hconn_close(hw, w, c)
        return 0
    if n < 0 or n <= c.ilen:
        return 0  # nothing new: wait for the next bytes
    c.ilen = <int>n
    c.sni_done = 0
    c.sni_len = 0
    probe = SSL_new(hw.probe_ctx)
    rbio = BIO_new(BIO_s_mem())
    wbio = BIO_new(BIO_s_mem())
    if probe == NULL or rbio == NULL or wbio == NULL:
        if probe != NULL:
            SSL_free(probe)
        hconn_close(hw, w, c)
        return 0
    BIO_write(rbio, c.ibuf, <int>n)
    SSL_set_bio(probe, rbio, wbio)
    SSL_set_app_data(probe, c)
    SSL_set_accept_state(probe)
    SSL_do_handshake(probe)
    SSL_free(probe)
    ERR_clear_error()
    if not c.sni_done and n < hw.cfg.buffer_size and n < 5 + 16384:
        # the ClientHello is not whole yet (or names no server: decided once it is whole)
        if n >= 5 and (<unsigned char>c.ibuf[0]) == 22:
            if n < 5 + ((<unsigned char>c.ibuf[3]) << 8 | (<unsigned char>c.ibuf[4])):
                return 0
    c.ilen = 0
    refresh_table(hw)
    e = named_host(hw.table, c.sni, c.sni_len) if c.sni_len > 0 else NULL
    if e == NULL or e.passthrough == NULL:
        return start_tls(hw, w, c)
    r = e.passthrough
    c.table = hw.table
    lb_atomic_add(&c.table.refs, 1)
    c.rule = r
    c.req_done = 1
    c.keep = 0
    c.svc = choose_service(hw, r, &c.verify_host)
    hw.counters[HC_PASSTHROUGH] += 1
    c.ubuf = buf_get(hw)
    c.dbuf = buf_get(hw)
    if c.svc == NULL or c.ubuf == NULL or c.dbuf == NULL:
        hconn_close(hw, w, c)  # no endpoint: the client sees the connection end
        return 0
    c.replayable = 1
    c.ulen = 0
    c.uoff = 0
    c.state = H_CONNECT
    c.rule = r
    tunnel_connect(hw, w, c)
    return 1


cdef void tunnel_connect(HttpWorker* hw, Worker* w, HConn* c) noexcept nogil:
    """Connect a passthrough stream to an endpoint (a new connection, never the pool's)."""
    cdef Endpoint* ep
    cdef HBack* b
    cdef int fd, r
    cdef epoll_event ev
    while True:
        if c.picked != NULL:
            ep_release(c.svc, c.picked)
            c.picked = NULL
        ep = service_pick(c.svc, &c.hl.side, &c.client, w.now, c.tried,
                          c.tries if c.tries < 8 else 8)
        if ep == NULL:
            hconn_close(hw, w, c)
            return
        c.picked = ep
        b = <HBack*>calloc(1, sizeof(HBack))
        fd = socket(ep.addr.sin6_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)
        if b == NULL or fd < 0:
            free(b)
            if fd >= 0:
                close(fd)
            hconn_close(hw, w, c)
            return
        set_nodelay(fd)
        b.kind = K_HBACKEND
        b.fd = fd
        b.ep = ep
        ep_incref(ep)
        b.owner = c
        b.since = w.now
        b.connect_iter = w.iter
        b.state = B_CONNECTING
        c.b = b
        r = connect(fd, <sockaddr*>&ep.addr, ep.addrlen)
        if r == 0 or errno == EINPROGRESS:
            ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET
            ev.data.ptr = b
            epoll_ctl(w.epfd, EPOLL_CTL_ADD, fd, &ev)
            if r == 0:
                b.state = B_BUSY
                c.state = H_TUNNEL
            return
        c.b = NULL
        b.state = B_BUSY
        back_close(hw, w, b)
        w.counters[C_CONNECT_FAILED] += 1
        mark_down(w, c.svc, ep)
        endpoint_failed(w, c.svc, ep)
        if c.tries < 8:
            c.tried[c.tries] = ep
        c.tries += 1
        if c.tries > w.cfg.retries:
            hconn_close(hw, w, c)
            return


cdef int relay(int src, int* ready, int dst, char* buf, int* len, int* off, int cap,
               int* eof, int* shut) noexcept nogil:
    """One direction of a passthrough stream: 1 when bytes moved, 0 when waiting, -1 on an
    error. A FIN is passed on as a half-close."""
    cdef ssize_t r
    cdef int moved = 0
    while True:
        if len[0] > off[0]:
            r = send(dst, buf + off[0], <size_t>(len[0] - off[0]), MSG_NOSIGNAL | MSG_DONTWAIT)
            if r < 0:
                return moved if errno == EAGAIN else -1
            off[0] += <int>r
            moved = 1
            if off[0] < len[0]:
                return moved
            off[0] = 0
            len[0] = 0
        if eof[0]:
            if not shut[0]:
                shutdown(dst, SHUT_WR)
                shut[0] = 1
            return moved
        r = io_recv(src, NULL, ready, buf, cap)
        if r > 0:
            len[0] = <int>r
            moved = 1
            continue
        if r == 0:
            eof[0] = 1
            continue
        return -1 if r == -2 else moved


cdef int tunnel(HttpWorker* hw, Worker* w, HConn* c) noexcept nogil:
    cdef HBack* b = c.b
    cdef int cap = hw.cfg.buffer_size
    cdef int up, down
    up = relay(c.fd, &c.ready, b.fd, c.ubuf, &c.ulen, &c.uoff, cap, &c.eof, &c.up_shut)
    down = relay(b.fd, &b.ready, c.fd, c.dbuf, &c.dlen, &c.doff, cap, &b.eof, &c.down_shut)
    if up < 0 or down < 0 or (c.eof and b.eof and c.ulen == 0 and c.dlen == 0):
        hconn_close(hw, w, c)
        return 0
    if up > 0 or down > 0:
        c.last_active = w.now
    return 0


cdef int drain_input(HttpWorker* hw, Worker* w, HConn* c) noexcept nogil:
    cdef ssize_t n
    while True:
        n = io_recv(c.fd, NULL, &c.ready, c.ibuf, hw.cfg.buffer_size)
        if n > 0:
            continue
        if n != -1:
            hconn_close(hw, w, c)
        return 0


cdef void drive(HttpWorker* hw, Worker* w, HConn* c) noexcept nogil:
    cdef int guard, progress
    for guard in range(64):
        if c.closed:
            return
        if c.state == H_HEAD:
            progress = read_head(hw, w, c)
        elif c.state == H_EXCHANGE:
            progress = exchange(hw, w, c)
        elif c.state == H_HANDSHAKE:
            progress = client_handshake(hw, w, c)
        elif c.state == H_TUNNEL:
            progress = tunnel(hw, w, c)
        elif c.state == H_PEEK:
            progress = peek_hello(hw, w, c)
        elif c.state == H_LINGER:
            progress = drain_input(hw, w, c)
        else:
            return  # H_CONNECT: the backend's events move it on
        if not progress:
            return


cdef void http_accept(Worker* w, ListenSock* ls) noexcept nogil:
    cdef HttpWorker* hw = <HttpWorker*>w.http
    cdef Listener* l = ls.listener
    cdef HttpListen* hl = <HttpListen*>l.http
    cdef sockaddr_storage client
    cdef socklen_t alen
    cdef int fd, k
    cdef HConn* c
    cdef epoll_event ev
    for k in range(BATCH):
        if l.max_conns > 0 and lb_atomic_load(&l.conns) >= l.max_conns:
            if not ls.paused and w.npaused < 64:
                pause_listener(w, ls, 0.0)
                w.counters[C_PAUSED] += 1
            return
        alen = sizeof(client)
        fd = accept4(ls.fd, <sockaddr*>&client, &alen, SOCK_NONBLOCK | SOCK_CLOEXEC)
        if fd < 0:
            if errno == EMFILE or errno == ENFILE or errno == ENOBUFS or errno == ENOMEM:
                out_of_descriptors(w, l)
            return
        w.counters[C_ACCEPTED] += 1
        hw.counters[HC_CLIENTS] += 1
        if hw.spare != NULL:
            c = hw.spare
            hw.spare = c.next_dead
            hw.nspare -= 1
            memset(c, 0, <size_t>(<char*>&c.ibuf - <char*>c))
            memset(&c.ilen, 0, sizeof(HConn) - <size_t>(<char*>&c.ilen - <char*>c))
        else:
            c = <HConn*>calloc(1, sizeof(HConn))
            if c != NULL:
                c.ibuf = <char*>malloc(<size_t>hw.cfg.buffer_size)
                if c.ibuf == NULL:
                    free(c)
                    c = NULL
        if c == NULL:
            close_with_reset(fd)
            continue
        c.kind = K_HCLIENT
        c.fd = fd
        c.hw = hw
        c.listener = l
        c.hl = hl
        lb_atomic_add(&l.refs, 1)
        lb_atomic_add(&l.conns, 1)
        memcpy(&c.client, &client, alen)
        if client.ss_family == AF_INET6:
            inet_ntop(AF_INET6, &(<sockaddr_in6*>&client).sin6_addr, c.client_ip, 48)
        else:
            inet_ntop(AF_INET, &(<sockaddr_in*>&client).sin_addr, c.client_ip, 48)
        c.client_ip_len = <int>strlen(c.client_ip)
        c.ready = READABLE
        c.last_active = w.now
        c.head_started = w.now
        c.next = hw.conns
        if hw.conns != NULL:
            hw.conns.prev = c
        hw.conns = c
        ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET
        ev.data.ptr = c
        epoll_ctl(w.epfd, EPOLL_CTL_ADD, fd, &ev)
        if hl.https:
            refresh_table(hw)
            if hw.table != NULL and hw.table.any_passthrough:
                c.state = H_PEEK
            elif not start_tls(hw, w, c):
                continue
        else:
            c.state = H_HEAD
        drive(hw, w, c)


cdef void http_event(Worker* w, void* p, uint32_t events) noexcept nogil:
    cdef HttpWorker* hw = <HttpWorker*>w.http
    cdef int kind = (<int*>p)[0]
    cdef int ready = readiness(events)
    cdef HConn* c
    cdef HBack* b
    if kind == K_HCLIENT:
        c = <HConn*>p
        if c.closed:
            return
        if ready > c.ready:
            c.ready = ready
        if c.state == H_PEEK and ready == ENDING:
            hconn_close(hw, w, c)
            return
        drive(hw, w, c)
        return
    b = <HBack*>p
    if b.fd < 0:
        return
    if b.state == B_IDLE:
        # an idle connection has nothing to say: the backend closed it (or broke the protocol)
        if events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR):
            back_close(hw, w, b)
        return
    c = b.owner
    if c == NULL or c.closed:
        return
    if ready > b.ready:
        b.ready = ready
    if b.state == B_CONNECTING:
        if b.connect_iter == w.iter:
            return  # about an earlier socket of this batch (see on_conn_event)
        if events & (EPOLLERR | EPOLLHUP):
            if c.state == H_CONNECT and c.rule != NULL and c.rule.passthrough:
                c.b = NULL
                b.state = B_BUSY
                back_close(hw, w, b)
                w.counters[C_CONNECT_FAILED] += 1
                mark_down(w, c.svc, c.picked)
                endpoint_failed(w, c.svc, c.picked)
                if c.tries < 8:
                    c.tried[c.tries] = c.picked
                c.tries += 1
                if c.tries > w.cfg.retries:
                    hconn_close(hw, w, c)
                else:
                    tunnel_connect(hw, w, c)
                return
            if backend_lost(hw, w, c, True):
                backend_for(hw, w, c)
            drive(hw, w, c)
            return
        if not events & EPOLLOUT:
            return
        if c.rule != NULL and c.rule.passthrough:
            b.state = B_BUSY
            c.state = H_TUNNEL
            drive(hw, w, c)
            return
        backend_opened(hw, w, c)
    elif b.state == B_TLS:
        if backend_handshake(hw, w, c):
            b.state = B_BUSY
            c.state = H_EXCHANGE
            c.awaiting = w.now
    drive(hw, w, c)


cdef void http_tick(Worker* w) noexcept nogil:
    """Timeouts of the HTTP path: request heads, kept-alive clients, handshakes, backends that
    do not connect or answer; idle pooled connections past their time or to endpoints that
    no longer take requests."""
    cdef HttpWorker* hw = <HttpWorker*>w.http
    cdef HConn* c
    cdef HConn* cn
    cdef HBack* b
    cdef HBack* bn
    cdef HttpConfig* cfg
    cdef int i
    if hw == NULL:
        return
    cfg = hw.cfg
    refresh_table(hw)
    c = hw.conns
    while c != NULL:
        cn = c.next
        if c.state == H_HEAD:
            if c.ilen > c.ioff and w.now - c.head_started > cfg.header_timeout:
                c.keep = 0
                c.req_done = 1
                answer(hw, c, 408, "request head not received in time\n", NULL, 0)
                drive(hw, w, c)
            elif c.ilen <= c.ioff and w.now - c.last_active > cfg.keepalive_timeout:
                hconn_close(hw, w, c)
        elif c.state == H_HANDSHAKE or c.state == H_PEEK:
            if w.now - c.head_started > cfg.header_timeout:
                hw.counters[HC_TIMEOUTS] += 1
                hconn_close(hw, w, c)
        elif c.state == H_CONNECT:
            b = c.b
            if b != NULL and w.now - b.since > w.cfg.connect_timeout:
                if c.rule != NULL and c.rule.passthrough:
                    hconn_close(hw, w, c)
                else:
                    if backend_lost(hw, w, c, True):
                        backend_for(hw, w, c)
                    drive(hw, w, c)
        elif c.state == H_EXCHANGE:
            if (c.b != NULL and c.resp_state == 0 and c.ulen == c.uoff and c.req_done
                    and w.cfg.server_timeout > 0 and w.now - c.awaiting > w.cfg.server_timeout):
                endpoint_failed(w, c.svc, c.picked)
                c.keep = 0
                c.b.state = B_BUSY
                back_close(hw, w, c.b)
                c.b = NULL
                answer(hw, c, 504, "the backend did not answer in time\n", NULL, 0)
                drive(hw, w, c)
            elif w.cfg.idle_timeout > 0 and w.now - c.last_active > w.cfg.idle_timeout and \
                    (c.b == NULL or w.now - c.awaiting > w.cfg.idle_timeout):
                hconn_close(hw, w, c)
        elif c.state == H_TUNNEL:
            if w.cfg.idle_timeout > 0 and w.now - c.last_active > w.cfg.idle_timeout:
                hconn_close(hw, w, c)
        elif c.state == H_LINGER:
            if w.now - c.last_active > 1.0:
                hconn_close(hw, w, c)
        c = cn
    for i in range(hw.npool):
        b = hw.pool[i]
        while b != NULL:
            bn = b.next
            if (w.now - b.since > cfg.pool_idle_timeout or lb_atomic_load(&b.ep.removed)
                    or b.ep.slot < 0):
                back_close(hw, w, b)
            b = bn


cdef void http_free_dead(Worker* w) noexcept nogil:
    cdef HttpWorker* hw = <HttpWorker*>w.http
    cdef HConn* c
    cdef HBack* b
    if hw == NULL:
        return
    while hw.dead != NULL:
        c = hw.dead
        hw.dead = c.next_dead
        if hw.nspare < SPARE_CONNS:
            c.next_dead = hw.spare
            hw.spare = c
            hw.nspare += 1
        else:
            free(c.ibuf)
            free(c)
    while hw.dead_backs != NULL:
        b = hw.dead_backs
        hw.dead_backs = b.next_dead
        free(b.buf)
        free(b)


cdef int http_worker_init(Worker* w, HttpConfig* cfg, RouteShared* routes) noexcept nogil:
    cdef HttpWorker* hw = <HttpWorker*>calloc(1, sizeof(HttpWorker))
    if hw == NULL:
        return -1
    hw.cfg = cfg
    hw.routes = routes
    hw.gen = -1
    hw.npool = 256
    hw.pool = <HBack**>calloc(hw.npool, sizeof(HBack*))
    hw.scratch = <char*>malloc(<size_t>cfg.buffer_size + HEAD_SLACK)
    hw.rng = hash_u64(<uint64_t><uintptr_t>hw ^ <uint64_t>(mono() * 1e9)) | 1
    hw.probe_ctx = SSL_CTX_new(TLS_server_method())
    if hw.pool == NULL or hw.scratch == NULL or hw.probe_ctx == NULL:
        free(hw.pool)
        free(hw.scratch)
        if hw.probe_ctx != NULL:
            SSL_CTX_free(hw.probe_ctx)
        free(hw)
        return -1
    SSL_CTX_set_tlsext_servername_callback(hw.probe_ctx, sni_probe)
    w.http = hw
    return 0


cdef void http_worker_shutdown(Worker* w) noexcept nogil:
    """After the loop: close every HTTP connection and idle backend connection."""
    cdef HttpWorker* hw = <HttpWorker*>w.http
    cdef int i
    cdef HConn* c
    cdef char* bf
    if hw == NULL:
        return
    while hw.conns != NULL:
        hconn_close(hw, w, hw.conns)
    for i in range(hw.npool):
        while hw.pool[i] != NULL:
            back_close(hw, w, hw.pool[i])
    http_free_dead(w)
    while hw.spare != NULL:
        c = hw.spare
        hw.spare = c.next_dead
        free(c.ibuf)
        free(c)
    hw.nspare = 0
    while hw.bufs != NULL:
        bf = hw.bufs
        hw.bufs = (<char**>bf)[0]
        free(bf)
    hw.nbufs = 0
    table_decref(hw.table)
    hw.table = NULL
    hw.gen = -1


cdef void http_worker_free(Worker* w) noexcept nogil:
    cdef HttpWorker* hw = <HttpWorker*>w.http
    if hw == NULL:
        return
    free(hw.pool)
    free(hw.scratch)
    SSL_CTX_free(hw.probe_ctx)
    free(hw)
    w.http = NULL


# ---------------------------------------------------------------------------------------------
# Building tables and contexts (Python side, with the GIL)
# ---------------------------------------------------------------------------------------------

cdef str ssl_error():
    cdef char buf[256]
    cdef unsigned long e = ERR_get_error()
    ERR_clear_error()
    if e == 0:
        return "unknown OpenSSL error"
    ERR_error_string_n(e, buf, 256)
    return buf.decode("ascii", "replace")


cdef SSL_CTX* server_context(bytes cert_pem, bytes key_pem, str where) except NULL:
    """An OpenSSL server context with a certificate chain and key from PEM (TLS 1.2 and 1.3)."""
    cdef SSL_CTX* ctx = SSL_CTX_new(TLS_server_method())
    cdef BIO* bio
    cdef X509* x
    cdef EVP_PKEY* key
    cdef bint first = True
    if ctx == NULL:
        raise MemoryError()
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION)
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER
                     | SSL_MODE_RELEASE_BUFFERS)
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION)
    SSL_CTX_set_read_ahead(ctx, 1)
    bio = BIO_new_mem_buf(<const char*>cert_pem, len(cert_pem))
    try:
        while True:
            x = PEM_read_bio_X509(bio, NULL, NULL, NULL)
            if x == NULL:
                break
            if first:
                r = SSL_CTX_use_certificate(ctx, x)
                X509_free(x)
                if r != 1:
                    raise ConfigError(f"{where}.certificate: {ssl_error()}")
                first = False
            elif SSL_CTX_add_extra_chain_cert(ctx, x) != 1:  # takes x
                X509_free(x)
                raise ConfigError(f"{where}.certificate: {ssl_error()}")
        ERR_clear_error()
        if first:
            raise ConfigError(f"{where}.certificate: no PEM certificate")
        BIO_free(bio)
        bio = BIO_new_mem_buf(<const char*>key_pem, len(key_pem))
        key = PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL)
        if key == NULL:
            raise ConfigError(f"{where}.key: no PEM private key ({ssl_error()})")
        r = SSL_CTX_use_PrivateKey(ctx, key)
        EVP_PKEY_free(key)
        if r != 1 or SSL_CTX_check_private_key(ctx) != 1:
            raise ConfigError(f"{where}.key: does not match the certificate ({ssl_error()})")
    except BaseException:
        BIO_free(bio)
        SSL_CTX_free(ctx)
        raise
    BIO_free(bio)
    return ctx


cdef SSL_CTX* client_context(bytes ca_pem, str where) except NULL:
    """An OpenSSL client context that verifies the peer against ``ca_pem`` (or the system's
    CAs when it is empty)."""
    cdef SSL_CTX* ctx = SSL_CTX_new(TLS_client_method())
    cdef BIO* bio
    cdef X509* x
    cdef int n = 0
    if ctx == NULL:
        raise MemoryError()
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION)
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER
                     | SSL_MODE_RELEASE_BUFFERS)
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION)
    SSL_CTX_set_read_ahead(ctx, 1)
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL)
    bio = BIO_new_mem_buf(<const char*>ca_pem, len(ca_pem))
    while True:
        x = PEM_read_bio_X509(bio, NULL, NULL, NULL)
        if x == NULL:
            break
        X509_STORE_add_cert(SSL_CTX_get_cert_store(ctx), x)
        X509_free(x)
        n += 1
    BIO_free(bio)
    ERR_clear_error()
    if n == 0 and ca_pem.strip():
        SSL_CTX_free(ctx)
        raise ConfigError(f"{where}.destination_ca: no PEM certificate in it")
    if n == 0:
        SSL_CTX_set_default_verify_paths(ctx)  # none given: the system's trust store
    return ctx


cdef RRule* build_rules(list rules, dict services, str where) except? NULL:
    """C rules of ``rules`` (dicts, see ``Engine.set_routes``), in the order given."""
    cdef RRule* out
    cdef RRule* r
    cdef int j, k
    cdef uintptr_t sp
    cdef bytes path
    if not rules:
        return NULL
    out = <RRule*>calloc(len(rules), sizeof(RRule))
    if out == NULL:
        raise MemoryError()
    try:
        for j, rule in enumerate(rules):
            r = &out[j]
            path = rule.get("path", "").encode()
            r.path = <char*>malloc(len(path) + 1)
            if r.path == NULL:
                raise MemoryError()
            memcpy(r.path, <const char*>path, len(path))
            r.path_len = len(path)
            match = rule.get("match", "Prefix")
            if match not in ("Prefix", "Exact"):
                raise ConfigError(f"{where}[{rule.get('path')!r}].match: {match!r} is not Prefix "
                                  "or Exact")
            r.match = MATCH_EXACT if match == "Exact" else MATCH_PREFIX
            r.redirect = 1 if rule.get("redirect") else 0
            r.passthrough = 1 if rule.get("passthrough") else 0
            if rule.get("reencrypt"):
                r.dest_ctx = client_context(_pem(rule.get("destination_ca") or b""), where)
            backends = list(rule.get("backends", ()))
            r.backends = <RBackend*>calloc(len(backends) + 1, sizeof(RBackend))
            if r.backends == NULL:
                raise MemoryError()
            for k, backend in enumerate(backends):
                svc_key, weight = backend[0], backend[1]
                verify = backend[2].encode("ascii") if len(backend) > 2 and backend[2] else b""
                sp = services.get(svc_key, 0)
                if sp == 0:
                    raise ConfigError(f"{where}[{rule.get('path')!r}].backends: service port "
                                      f"{svc_key!r} has no endpoint table")
                if not 0 <= weight <= 256:
                    raise ConfigError(f"{where}[{rule.get('path')!r}].backends: weight "
                                      f"{weight!r} is not in 0..256")
                r.backends[k].svc = <Service*>sp
                lb_atomic_add(&(<Service*>sp).refs, 1)
                r.backends[k].weight = weight
                r.nbackends = k + 1
                if verify:
                    r.backends[k].verify_host = <char*>malloc(len(verify) + 1)
                    if r.backends[k].verify_host == NULL:
                        raise MemoryError()
                    memcpy(r.backends[k].verify_host, <const char*>verify, len(verify) + 1)
    except BaseException:
        rules_free(out, len(rules))
        raise
    return out


cdef RTable* build_table(list hosts, dict services, object default_certificate) except NULL:
    """The C routing table of ``hosts`` (see ``Engine.set_routes``)."""
    cdef RTable* t = <RTable*>calloc(1, sizeof(RTable))
    cdef RHost* e
    cdef int i, k, nb
    cdef bytes name
    if t == NULL:
        raise MemoryError()
    t.refs = 1
    n = len(hosts)
    nb = 16
    while nb < 2 * n:
        nb *= 2
    t.nbuckets = nb
    t.buckets = <RHost**>calloc(nb, sizeof(RHost*))
    t.hosts = <RHost*>calloc(n + 1, sizeof(RHost))
    if t.buckets == NULL or t.hosts == NULL:
        table_decref(t)
        raise MemoryError()
    try:
        if default_certificate is not None:
            t.default_ctx = server_context(_pem(default_certificate[0]),
                                           _pem(default_certificate[1]), "default_certificate")
        for i, spec in enumerate(hosts):
            host = (spec.get("host") or "").lower().rstrip(".")
            where = f"hosts[{host!r}]"
            wildcard = 1 if host.startswith("*.") else 0
            name = (host[2:] if wildcard else host).encode("ascii", "replace")
            if len(name) > 253:
                raise ConfigError(f"{where}.host: {host!r} is not a host name")
            e = &t.hosts[t.nhosts]
            t.nhosts += 1
            e.name = <char*>malloc(len(name) + 1)
            if e.name == NULL:
                raise MemoryError()
            memcpy(e.name, <const char*>name, len(name))
            e.name_len = len(name)
            e.wildcard = wildcard
            e.hash = host_hash(e.name, e.name_len, wildcard)
            if table_find(t, e.name, e.name_len, wildcard) != NULL or (not name and t.any != NULL):
                raise ConfigError(f"{where}.host: {host!r} appears twice")
            if not name:
                t.any = e
            else:
                k = <int>(e.hash & <uint64_t>(nb - 1))
                e.next = t.buckets[k]
                t.buckets[k] = e
            cert = spec.get("certificate") or b""
            key = spec.get("key") or b""
            if cert or key:
                e.ctx = server_context(_pem(cert), _pem(key), where)
            http = list(spec.get("http", ()))
            https = list(spec.get("https", ()))
            e.http = build_rules(http, services, where + ".http")
            e.nhttp = len(http)
            e.https = build_rules(https, services, where + ".https")
            e.nhttps = len(https)
            if spec.get("passthrough"):
                e.passthrough = build_rules([dict(spec["passthrough"], passthrough=True)],
                                            services, where + ".passthrough")
                t.any_passthrough = 1
    except BaseException:
        table_decref(t)
        raise
    return t


def _pem(value) -> bytes:
    return value.encode() if isinstance(value, str) else bytes(value)


cdef SSL_CTX* listener_context(RouteShared* routes, bint resumption) except NULL:
    """An HTTPS listener's context: no certificate of its own, the servername callback hands
    each handshake to the certificate of the host SNI names. Without ``resumption``, no
    session tickets and no session cache: every handshake is a full one."""
    cdef SSL_CTX* ctx = SSL_CTX_new(TLS_server_method())
    if ctx == NULL:
        raise MemoryError()
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION)
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER
                     | SSL_MODE_RELEASE_BUFFERS)
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION)
    SSL_CTX_set_read_ahead(ctx, 1)
    if not resumption:
        SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET)
        SSL_CTX_set_num_tickets(ctx, 0)
        SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF)
    SSL_CTX_set_tlsext_servername_callback(ctx, sni_to_host)
    return ctx


cdef void http_listen_free(void* p) noexcept nogil:
    cdef HttpListen* hl = <HttpListen*>p
    if hl == NULL:
        return
    if hl.ctx != NULL:
        SSL_CTX_free(hl.ctx)
    free(hl)
