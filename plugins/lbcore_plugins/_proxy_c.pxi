"""C declarations of the socket data path (epoll, sockets, splice) and its structures."""

from libc.stdint cimport int32_t, uint8_t, uint32_t, uint64_t


cdef extern from "<sys/epoll.h>" nogil:
    ctypedef union epoll_data_t:
        void* ptr
        int fd
        uint32_t u32
        uint64_t u64

    cdef struct epoll_event:
        uint32_t events
        epoll_data_t data

    enum:
        EPOLLIN
        EPOLLOUT
        EPOLLERR
        EPOLLHUP
        EPOLLRDHUP
        EPOLLET
        EPOLLEXCLUSIVE
        EPOLL_CTL_ADD
        EPOLL_CTL_DEL
        EPOLL_CTL_MOD
        EPOLL_CLOEXEC

    int epoll_create1(int flags)
    int epoll_ctl(int epfd, int op, int fd, epoll_event* event)
    int epoll_wait(int epfd, epoll_event* events, int maxevents, int timeout)


cdef extern from "<sys/socket.h>" nogil:
    ctypedef unsigned int socklen_t
    ctypedef unsigned short sa_family_t

    cdef struct sockaddr:
        sa_family_t sa_family

    cdef struct sockaddr_storage:
        sa_family_t ss_family

    cdef struct linger:
        int l_onoff
        int l_linger

    enum:
        AF_INET
        AF_INET6
        SOCK_STREAM
        SOCK_DGRAM
        SOCK_NONBLOCK
        SOCK_CLOEXEC
        SOL_SOCKET
        SO_LINGER
        SHUT_WR
        MSG_NOSIGNAL
        MSG_DONTWAIT
        MSG_MORE

    int socket(int domain, int type, int protocol)
    int connect(int fd, const sockaddr* addr, socklen_t len)
    int accept4(int fd, sockaddr* addr, socklen_t* len, int flags)
    ssize_t recv(int fd, void* buf, size_t n, int flags)
    ssize_t send(int fd, const void* buf, size_t n, int flags)
    ssize_t recvfrom(int fd, void* buf, size_t n, int flags, sockaddr* addr, socklen_t* len)
    ssize_t sendto(int fd, const void* buf, size_t n, int flags, const sockaddr* addr,
                   socklen_t len)
    int setsockopt(int fd, int level, int name, const void* value, socklen_t len)
    int shutdown(int fd, int how)


cdef extern from "<netinet/in.h>" nogil:
    enum:
        IPPROTO_TCP

    cdef struct in_addr:
        uint32_t s_addr

    cdef struct in6_addr:
        unsigned char s6_addr[16]

    cdef struct sockaddr_in:
        sa_family_t sin_family
        unsigned short sin_port
        in_addr sin_addr

    cdef struct sockaddr_in6:
        sa_family_t sin6_family
        unsigned short sin6_port
        in6_addr sin6_addr

    unsigned short htons(unsigned short)
    unsigned short ntohs(unsigned short)


cdef extern from "<netinet/tcp.h>" nogil:
    enum:
        TCP_NODELAY
        TCP_QUICKACK


cdef extern from "<arpa/inet.h>" nogil:
    int inet_pton(int af, const char* src, void* dst)
    const char* inet_ntop(int af, const void* src, char* dst, socklen_t size)


cdef extern from "<fcntl.h>" nogil:
    enum:
        SPLICE_F_MOVE
        SPLICE_F_NONBLOCK
        F_SETPIPE_SZ
        O_NONBLOCK
        O_CLOEXEC

    ssize_t splice(int fd_in, void* off_in, int fd_out, void* off_out, size_t len,
                   unsigned int flags)
    int fcntl(int fd, int cmd, ...)


cdef extern from "<malloc.h>" nogil:
    int malloc_trim(size_t pad)


cdef extern from "<unistd.h>" nogil:
    int pipe2(int* fds, int flags)


cdef extern from "<sys/eventfd.h>" nogil:
    enum:
        EFD_NONBLOCK
        EFD_CLOEXEC

    int eventfd(unsigned int initval, int flags)


cdef extern from "<pthread.h>" nogil:
    ctypedef struct pthread_mutex_t:
        pass

    int pthread_mutex_init(pthread_mutex_t* m, void* attr)
    int pthread_mutex_destroy(pthread_mutex_t* m)
    int pthread_mutex_lock(pthread_mutex_t* m)
    int pthread_mutex_unlock(pthread_mutex_t* m)


cdef extern from *:
    """
    static inline int lb_atomic_add(int *p, int v) {
        return __atomic_add_fetch(p, v, __ATOMIC_ACQ_REL);
    }
    static inline int lb_atomic_load(int *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
    static inline void lb_atomic_store(int *p, int v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
    static inline unsigned long long lb_atomic_load_u64(unsigned long long *p) {
        return __atomic_load_n(p, __ATOMIC_ACQUIRE);
    }
    static inline void lb_atomic_inc_u64(unsigned long long *p) {
        __atomic_add_fetch(p, 1, __ATOMIC_ACQ_REL);
    }
    """
    int lb_atomic_add(int* p, int v) nogil
    int lb_atomic_load(int* p) nogil
    void lb_atomic_store(int* p, int v) nogil
    unsigned long long lb_atomic_load_u64(unsigned long long* p) nogil
    void lb_atomic_inc_u64(unsigned long long* p) nogil


# ---------------------------------------------------------------------------------------------
# The data path's structures. Everything registered in an epoll set starts with ``int kind``.
# ---------------------------------------------------------------------------------------------

cdef enum:
    MAX_WORKERS = 64
    K_LISTEN_TCP = 1
    K_LISTEN_UDP = 2
    K_CLIENT = 3
    K_BACKEND = 4
    K_FLOW = 5
    K_WAKE = 6
    K_LISTEN_HTTP = 7    # the route frontend's listeners and connections (_proxy_http.pxi)
    K_HCLIENT = 8
    K_HBACKEND = 9

cdef enum:
    ST_CONNECTING = 0
    ST_OPEN = 1

# worker counters, summed by Engine.stats()
cdef enum:
    C_ACCEPTED = 0
    C_CLOSED = 1
    C_CONNECT_FAILED = 2
    C_RETRIED = 3
    C_REJECTED = 4
    C_IDLE_CLOSED = 5
    C_SPLICED = 6
    C_UDP_FLOWS = 7
    C_UDP_DROPPED_FLOWS = 8
    C_UDP_DATAGRAMS = 9
    C_PAUSED = 10
    C_FD_EXHAUSTED = 11
    C_UDP_EVICTED = 12
    C_SERVER_TIMEOUT = 13
    C_EJECTED = 14
    N_COUNTERS = 15


cdef struct Listener
cdef struct Conn


cdef struct Endpoint:
    # a sockaddr_in or sockaddr_in6 (the family is at the same place in both): 28 bytes, not a
    # sockaddr_storage's 128, so an endpoint takes 80 bytes of the heap and not 192
    sockaddr_in6 addr
    socklen_t addrlen
    int slot             # index in the service's balancer; -1: takes no new connection
    int ident            # id in the service's affinity table, kept while the endpoint stays
    int removed          # no longer in its service: UDP flows to it are dropped
    int active           # open connections and flows (changed under the service's lock)
    int refs
    double down_until    # refused or timed out: not picked before this time
    int failures         # failures in a row (refused, timed out, no answer); an answer resets it
    int ejections        # times ejected: each ejection lasts twice the one before


cdef struct Service:
    pthread_mutex_t lock     # guards everything below but refs; never held while taking the GIL
    Endpoint** eps           # every endpoint of the table, pickable or not
    int neps
    Endpoint** picks         # balancer index -> endpoint (the endpoints taking new connections)
    int npicks
    void* balancer           # an lbcore Balancer (borrowed: the Engine keeps it alive), or NULL
    void* affinity           # an lbcore AffinityTable (borrowed likewise), or NULL
    Endpoint** by_ident      # affinity id -> endpoint, or NULL for a free id
    int nidents
    int32_t* bal_ids         # the pick policy's arrays (lbcore.core._policy_c.PickSet):
    int32_t* bidx            #   balancer index -> id, id -> balancer index or -1,
    double* down             #   id -> marked down until
    bint five_tuple          # hashed algorithms key by the 5-tuple, not the client IP
    double affinity_epoch    # the affinity table's clock origin, in mono() seconds
    int refs


cdef struct ListenSock:
    int kind
    int fd
    int worker
    int paused
    double resume_at     # a paused listener comes back at this time (0: below max_connections)
    Listener* listener


cdef struct Listener:
    Service* svc             # NULL for an HTTP listener, which routes each request
    void* http               # an HTTP listener's settings (HttpListen), or NULL
    ct_key conn              # the service's side of a connection's 5-tuple (hash_key five_tuple)
    int max_conns
    int conns
    int refs
    int nsocks
    ListenSock socks[64]


cdef struct Half:
    char* buf
    int len
    int off
    int pipe_r
    int pipe_w
    int piped
    int splicing
    int eof
    int shut
    unsigned long long sent    # bytes passed on to the other side


cdef struct Side:
    int kind
    Conn* conn


cdef struct Conn:
    Side cside
    Side bside
    int cfd
    int bfd
    int state
    int closed
    int tries
    int cready           # the client socket may have bytes (or an end) to read
    int bready           # the backend socket likewise
    int cwatch_out       # the client socket's registration includes EPOLLOUT
    unsigned long long connect_iter   # loop iteration that created the backend socket
    Half up        # client -> backend
    Half down      # backend -> client
    Listener* listener
    Endpoint* ep
    Endpoint* tried[8]
    sockaddr_storage client
    double started
    double last_active
    double awaiting      # bytes went to the backend at this time and none came back since (0: none)
    Conn* prev
    Conn* next
    Conn* next_dead


cdef struct ClientFlows:
    uint8_t addr[16]         # the client's IP, IPv4 as ::ffff:a.b.c.d
    int count                # its open flows on this worker
    ClientFlows* next


cdef struct Flow:
    int kind
    int fd
    int closed
    ListenSock* lsock
    Endpoint* ep
    sockaddr_storage client
    socklen_t client_len
    uint64_t hash
    double last_active
    ClientFlows* owner       # the count of flows of this client
    Flow* bucket_next
    Flow* prev               # the worker's flows, most recently used first
    Flow* next
    Flow* next_dead


cdef enum:
    CMD_ADD = 1
    CMD_DEL = 2


cdef enum:
    # listening sockets a worker can hold out of its epoll set at once; past that, a listener at
    # its limit refuses (accepts and resets) rather than spin on a readable socket
    MAX_PAUSED = 1024


cdef struct Command:
    int op
    int done
    ListenSock* ls
    Command* next


cdef struct Config:
    int buffer_size
    int splice_mode      # 0 never, 1 auto, 2 always
    int pipe_size
    int retries
    double connect_timeout
    double idle_timeout
    double udp_idle_timeout
    double down_time
    double server_timeout     # seconds a backend may leave a request unanswered (0: no limit)
    int eject_after           # failures in a row that eject an endpoint
    double max_ejected_share  # at most this share of a service's endpoints ejected at once
    int udp_max_flows         # flows a worker keeps (the least recently used go first)
    int udp_max_client_flows  # flows of one client IP a worker keeps
    int max_conns             # TCP connections open at once over every listener (0: no limit)
    int conns                 # TCP connections open now, over every worker (atomic)


cdef struct Worker:
    int kind             # K_WAKE: the wake eventfd's epoll tag points here
    int id
    int epfd
    int wakefd
    int stop
    unsigned long long iter    # loop iterations, to tell an event of a closed socket from a new one's
    double now
    double next_tick
    Config* cfg
    Conn* conns
    Conn* dead
    Conn* spare          # closed connections kept with their buffers for the next ones
    int nspare
    Flow* flows
    Flow* flows_tail     # the least recently used flow
    int nflows
    ClientFlows** clients      # client IP -> its flow count, chained by hash
    Flow* dead_flows
    Flow** buckets
    int nbuckets
    int pipe_pool[128]
    int npipes
    char* dgram
    pthread_mutex_t qlock
    Command* queue
    ListenSock* paused[MAX_PAUSED]
    int freed            # connections freed (not kept as spare) since the last malloc_trim
    double next_trim
    int npaused
    unsigned long long counters[16]
    void* http           # the route frontend's state of this worker (HttpWorker)
