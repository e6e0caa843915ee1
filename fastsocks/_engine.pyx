# cython: language_level=3, embedsignature=True
"""The Linux relay engine: epoll + splice(2) in a thread that never takes the GIL.

Once a CONNECT succeeds, the session hands the two socket descriptors (and
any bytes already read, in both directions) to the engine, which owns them
until both directions have ended.  Bytes move socket → pipe → socket with
splice(2), so they never enter user space and no Python object is made per
chunk; the event loop thread only does handshakes.

* A direction starts in copy mode: recv(2) into a 16 KiB buffer on the
  engine thread's stack, send(2) straight on.  For the few small writes of a
  short connection that is two system calls per chunk where splice needs a
  pipe and two splices (and a third to find the source empty).  The first
  read that fills the buffer makes the direction bulk for good: splice, or
  (``Engine.bulk``; by default where both sockets' TCP segment size is
  16 KiB or more, as on loopback, where it measured faster) recv and send
  through the engine's 4 MiB buffer.  A short write leaves that buffer with
  the direction until the rest is sent (the engine reads into another),
  at most ``bulk_held_max`` of them in the process; past it, 16 KiB reads.
* Each direction tracks whether its source may hold data: set by an epoll
  event, cleared by EAGAIN or, in copy mode, by a short read (the receive
  queue was empty; whatever arrives later is a new edge).  An event for one
  direction never costs the other a system call.
* In splice mode a direction moves bytes only while its pipe is empty enough
  to read into, and stops reading its source while the destination cannot
  take more (EAGAIN): backpressure is the kernel's socket buffers plus one
  pipe (or, in copy mode, the bytes of one short write held back).
* Pipes come from a pool and go back to it as soon as they are empty, so an
  idle pair holds no pipe: its cost is one ``Pair`` struct.
* Half-close: EOF from one side becomes shutdown(SHUT_WR) on the other once
  everything read before it has been written; the other direction goes on.
  The direction that ends last skips its shutdown: the close that follows
  sends the same FIN (both receive queues are empty by then, so no RST).
* A pair may come while its outbound connect(2) is still in progress
  (``connect_timeout``): the engine waits for the upstream socket to become
  writable, reads SO_ERROR, and only then sends the reply and relays.  The
  event loop spends no wake-up, no writer callback and no timer on the
  connect.  A failed connect hands the client's descriptor back, open, so
  that the control plane words the refusal; a client that leaves before the
  connect is done (EOF with nothing queued) ends the pair at once, which
  aborts the connect.
* Idle pairs (and connects past their timeout) are closed by a scan every
  quarter second against a coarse clock.
* Bandwidth limits are token buckets (``Throttle``: one per connection, or
  one shared by a user's connections) checked before each read: a direction
  over its rate stops reading until its bucket refills, so TCP flow control
  slows the sender, and the engine wakes it on a timer; no Python runs.
* It can also take a connection before its handshake (``negotiate``): the
  engine reads the greeting, answers X'05 00' where the server would choose
  "no authentication" (or X'05 02', and X'01 00' to an RFC 1929 login that
  the users file's cache vouches for, kept here as keyed BLAKE2s MACs),
  reads the request, and reports a well-formed CONNECT
  to the event loop, which decides and answers with ``dial`` (the upstream
  socket, connecting or connected, and the reply) or ``end`` (a refusal).
  Anything else (another protocol, another method or command, a malformed
  message) is handed back with the bytes read, for the loop's codec.  The
  client's descriptor is in epoll once, from accept to close; nobody
  duplicates it, so its close alone removes it (no EPOLL_CTL_DEL).
* Finished pairs are reported (id, bytes each way, reason) through a queue and
  an eventfd that the event loop watches (each pair's report is allocated
  when it is added, so the engine thread never fails to report one);
  commands (add, close, close all, stop) reach the engine through another
  queue and eventfd, written only by a command that finds the queue empty.

Pitfalls handled here: an fd is removed from epoll before it is closed, and
a pair is freed only after the epoll batch that may still name it.
"""

cimport cython
from libc.errno cimport errno, EAGAIN, ECONNABORTED, EINTR, EPERM, EPROTO, ETIMEDOUT
from libc.stdint cimport uint32_t, uint64_t, int64_t, uintptr_t
from libc.stdlib cimport calloc, free, malloc, realloc
from libc.string cimport memchr, memcmp, memcpy
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE

import logging as _logging
import os as _os
import threading as _threading

_log = _logging.getLogger("fastsocks.relay")


cdef extern from "<sys/epoll.h>" nogil:
    ctypedef union epoll_data_t:
        void* ptr
        int fd
        uint32_t u32
        uint64_t u64

    struct epoll_event:
        uint32_t events
        epoll_data_t data

    int epoll_create1(int flags)
    int epoll_ctl(int epfd, int op, int fd, epoll_event* event)
    int epoll_wait(int epfd, epoll_event* events, int maxevents, int timeout)
    enum:
        EPOLL_CLOEXEC
        EPOLL_CTL_ADD
        EPOLL_CTL_DEL
        EPOLL_CTL_MOD
        EPOLLIN
        EPOLLOUT
        EPOLLERR
        EPOLLHUP
        EPOLLRDHUP
        EPOLLET


cdef extern from "<fcntl.h>" nogil:
    ssize_t splice(int fd_in, void* off_in, int fd_out, void* off_out, size_t len,
                   unsigned int flags)
    int pipe2(int* pipefd, int flags)
    int fcntl(int fd, int cmd, ...)
    enum:
        SPLICE_F_MOVE
        SPLICE_F_NONBLOCK
        F_SETPIPE_SZ
        O_NONBLOCK
        O_CLOEXEC


cdef extern from "<sys/eventfd.h>" nogil:
    int eventfd(unsigned int initval, int flags)
    enum:
        EFD_NONBLOCK
        EFD_CLOEXEC


cdef extern from "<sys/socket.h>" nogil:
    ssize_t send(int fd, const void* buf, size_t n, int flags)
    ssize_t recv(int fd, void* buf, size_t n, int flags)
    int shutdown(int fd, int how)
    int getsockopt(int fd, int level, int name, void* value, unsigned int* size)
    enum:
        SHUT_WR
        MSG_NOSIGNAL
        MSG_PEEK
        MSG_DONTWAIT
        SOL_SOCKET
        SO_ERROR
        AF_INET
        AF_INET6


cdef extern from "<unistd.h>" nogil:
    int close(int fd)
    ssize_t read(int fd, void* buf, size_t n)
    ssize_t write(int fd, const void* buf, size_t n)


cdef extern from "<time.h>" nogil:
    struct timespec:
        long tv_sec
        long tv_nsec
    int clock_gettime(int clk, timespec* ts)
    enum:
        CLOCK_MONOTONIC_COARSE
        CLOCK_MONOTONIC


cdef extern from *:
    """
    static inline int fastsocks_ref_add(int* p, int d) {
        return __atomic_add_fetch(p, d, __ATOMIC_ACQ_REL);
    }
    """
    int fastsocks_ref_add(int* p, int d) nogil


cdef extern from *:
    """
    #include <netinet/in.h>
    #include <netinet/tcp.h>
    #include <sys/socket.h>

    static inline void fastsocks_store(int* p, int v) {
        __atomic_store_n(p, v, __ATOMIC_RELEASE);
    }

    /* The connected socket's TCP segment size (TCP_MAXSEG); 0 when it has none. */
    static inline int fastsocks_mss(int fd) {
        int v = 0;
        socklen_t len = sizeof v;
        return getsockopt(fd, IPPROTO_TCP, TCP_MAXSEG, &v, &len) < 0 ? 0 : v;
    }
    """
    void fastsocks_store(int* p, int v) nogil
    int fastsocks_mss(int fd) nogil


cdef extern from *:
    """
    #include <errno.h>
    #include <netinet/in.h>
    #include <netinet/tcp.h>
    #include <string.h>
    #include <sys/socket.h>
    #include <unistd.h>

    /* A CONNECT's non-blocking connect(2) to ``addr`` (4 or 16 bytes, network
       order) and ``port`` (2 bytes), with TCP_NODELAY; writes the success
       reply (RFC 1928 section 6, BND = the socket's own address) to ``reply``
       (22 bytes at most).  The socket, or -1 when it failed at once. */
    static int fastsocks_dial(int v6, const unsigned char* addr, const unsigned char* port,
                              char* reply, Py_ssize_t* reply_len) {
        struct sockaddr_storage ss;
        socklen_t len;
        int fd, one = 1;
        memset(&ss, 0, sizeof ss);
        if (v6) {
            struct sockaddr_in6* s = (struct sockaddr_in6*)&ss;
            s->sin6_family = AF_INET6;
            memcpy(&s->sin6_addr, addr, 16);
            memcpy(&s->sin6_port, port, 2);
            len = sizeof *s;
        } else {
            struct sockaddr_in* s = (struct sockaddr_in*)&ss;
            s->sin_family = AF_INET;
            memcpy(&s->sin_addr, addr, 4);
            memcpy(&s->sin_port, port, 2);
            len = sizeof *s;
        }
        fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0)
            return -1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        len = sizeof ss;
        if ((connect(fd, (struct sockaddr*)&ss, v6 ? sizeof(struct sockaddr_in6)
                                                   : sizeof(struct sockaddr_in)) < 0
             && errno != EINPROGRESS)
                || getsockname(fd, (struct sockaddr*)&ss, &len) < 0) {
            close(fd);
            return -1;
        }
        reply[0] = 5;
        reply[1] = 0;
        reply[2] = 0;
        if (ss.ss_family == AF_INET6) {
            struct sockaddr_in6* s = (struct sockaddr_in6*)&ss;
            reply[3] = 4;
            memcpy(reply + 4, &s->sin6_addr, 16);
            memcpy(reply + 20, &s->sin6_port, 2);
            *reply_len = 22;
        } else {
            struct sockaddr_in* s = (struct sockaddr_in*)&ss;
            reply[3] = 1;
            memcpy(reply + 4, &s->sin_addr, 4);
            memcpy(reply + 8, &s->sin_port, 2);
            *reply_len = 10;
        }
        return fd;
    }
    """
    int fastsocks_dial(int v6, const unsigned char* addr, const unsigned char* port,
                       char* reply, Py_ssize_t* reply_len) nogil


cdef extern from *:
    """
    #include <arpa/inet.h>

    /* accept4(2) of a non-blocking, close-on-exec connection; its peer's
       address (a sockaddr_in or sockaddr_in6) into ``peer`` (28 bytes). */
    static int fastsocks_accept(int lfd, char* peer, int* peer_len) {
        struct sockaddr_storage ss;
        socklen_t len = sizeof ss;
        int fd = accept4(lfd, (struct sockaddr*)&ss, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            return -1;
        if (len > 28)
            len = 28;
        memcpy(peer, &ss, len);
        *peer_len = (int)len;
        return fd;
    }

    /* The peer of fastsocks_accept as text: its family (0: none known). */
    static int fastsocks_peer(const char* peer, int peer_len, char* host, int* port,
                              unsigned int* flow, unsigned int* scope) {
        struct sockaddr_in a4;
        struct sockaddr_in6 a6;
        if (peer_len >= (int)sizeof a6 && ((const struct sockaddr*)peer)->sa_family == AF_INET6) {
            memcpy(&a6, peer, sizeof a6);
            inet_ntop(AF_INET6, &a6.sin6_addr, host, 46);
            *port = ntohs(a6.sin6_port);
            *flow = ntohl(a6.sin6_flowinfo);
            *scope = a6.sin6_scope_id;
            return AF_INET6;
        }
        if (peer_len >= (int)sizeof a4 && ((const struct sockaddr*)peer)->sa_family == AF_INET) {
            /* Dotted quad by hand: glibc's inet_ntop formats IPv4 with sprintf. */
            const unsigned char* o;
            char* h = host;
            int i;
            memcpy(&a4, peer, sizeof a4);
            o = (const unsigned char*)&a4.sin_addr;
            for (i = 0; i < 4; i++) {
                if (o[i] >= 100)
                    *h++ = '0' + o[i] / 100;
                if (o[i] >= 10)
                    *h++ = '0' + o[i] / 10 % 10;
                *h++ = '0' + o[i] % 10;
                *h++ = i < 3 ? '.' : 0;
            }
            *port = ntohs(a4.sin_port);
            return AF_INET;
        }
        return 0;
    }
    """
    int fastsocks_accept(int lfd, char* peer, int* peer_len) nogil
    int fastsocks_peer(const char* peer, int peer_len, char* host, int* port,
                       unsigned int* flow, unsigned int* scope) nogil


cdef extern from *:
    """
    #include <stdint.h>
    #include <stdlib.h>
    #include <string.h>

    /* RFC 1929 logins that the users file's cache vouches for (control/auth.py):
       BLAKE2s-256 MACs (RFC 7693, keyed) of the credentials, as ``Users`` makes
       them, in an open-addressed set.  The engine checks a login against it
       without the GIL; the loop adds to it after each good hash check. */
    static const uint32_t fastsocks_b2s_iv[8] = {
        0x6A09E667u, 0xBB67AE85u, 0x3C6EF372u, 0xA54FF53Au,
        0x510E527Fu, 0x9B05688Cu, 0x1F83D9ABu, 0x5BE0CD19u};
    static const uint8_t fastsocks_b2s_sigma[10][16] = {
        {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
        {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
        {11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4},
        {7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8},
        {9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13},
        {2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9},
        {12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11},
        {13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10},
        {6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5},
        {10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0}};

    #define FASTSOCKS_ROTR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))
    #define FASTSOCKS_G(a, b, c, d, x, y) do { \
        v[a] += v[b] + (x); v[d] = FASTSOCKS_ROTR(v[d] ^ v[a], 16); \
        v[c] += v[d];       v[b] = FASTSOCKS_ROTR(v[b] ^ v[c], 12); \
        v[a] += v[b] + (y); v[d] = FASTSOCKS_ROTR(v[d] ^ v[a], 8);  \
        v[c] += v[d];       v[b] = FASTSOCKS_ROTR(v[b] ^ v[c], 7); } while (0)

    /* The compression function F (RFC 7693 section 3.2); ``t`` the bytes so far
       (the messages here stay far below 2^32 bytes). */
    static void fastsocks_b2s_compress(uint32_t* h, const uint8_t* block, uint32_t t, int last) {
        uint32_t v[16], m[16];
        int i;
        for (i = 0; i < 16; i++)
            m[i] = (uint32_t)block[4 * i] | (uint32_t)block[4 * i + 1] << 8
                 | (uint32_t)block[4 * i + 2] << 16 | (uint32_t)block[4 * i + 3] << 24;
        for (i = 0; i < 8; i++) {
            v[i] = h[i];
            v[i + 8] = fastsocks_b2s_iv[i];
        }
        v[12] ^= t;
        if (last)
            v[14] = ~v[14];
        for (i = 0; i < 10; i++) {
            const uint8_t* s = fastsocks_b2s_sigma[i];
            FASTSOCKS_G(0, 4, 8, 12, m[s[0]], m[s[1]]);
            FASTSOCKS_G(1, 5, 9, 13, m[s[2]], m[s[3]]);
            FASTSOCKS_G(2, 6, 10, 14, m[s[4]], m[s[5]]);
            FASTSOCKS_G(3, 7, 11, 15, m[s[6]], m[s[7]]);
            FASTSOCKS_G(0, 5, 10, 15, m[s[8]], m[s[9]]);
            FASTSOCKS_G(1, 6, 11, 12, m[s[10]], m[s[11]]);
            FASTSOCKS_G(2, 7, 8, 13, m[s[12]], m[s[13]]);
            FASTSOCKS_G(3, 4, 9, 14, m[s[14]], m[s[15]]);
        }
        for (i = 0; i < 8; i++)
            h[i] ^= v[i] ^ v[i + 8];
    }

    /* BLAKE2s-256 of ``msg`` (``n`` bytes) keyed with ``key`` (32 bytes). */
    static void fastsocks_blake2s(const uint8_t* key, const uint8_t* msg, size_t n,
                                  uint8_t* out) {
        uint32_t h[8];
        uint8_t block[64];
        uint32_t t = 64;
        int i;
        for (i = 0; i < 8; i++)
            h[i] = fastsocks_b2s_iv[i];
        h[0] ^= 0x01010000u ^ (32u << 8) ^ 32u;
        memset(block, 0, 64);
        memcpy(block, key, 32);
        fastsocks_b2s_compress(h, block, t, n == 0);
        while (n > 64) {
            t += 64;
            fastsocks_b2s_compress(h, msg, t, 0);
            msg += 64;
            n -= 64;
        }
        if (n > 0) {
            memset(block, 0, 64);
            memcpy(block, msg, n);
            t += (uint32_t)n;
            fastsocks_b2s_compress(h, block, t, 1);
        }
        for (i = 0; i < 32; i++)
            out[i] = (uint8_t)(h[i / 4] >> (8 * (i % 4)));
    }

    /* The MAC of a login: BLAKE2s-256 under ``key`` of the user name and the
       password, each after its length (4 bytes, big-endian). */
    static void fastsocks_login_mac(const uint8_t* key, const uint8_t* name, size_t nlen,
                                    const uint8_t* password, size_t plen, uint8_t* out) {
        uint8_t msg[4 + 255 + 4 + 255];
        size_t n = 0;
        if (nlen > 255 || plen > 255) {   /* RFC 1929's fields never are */
            memset(out, 0, 32);
            return;
        }
        msg[n++] = 0; msg[n++] = 0; msg[n++] = 0; msg[n++] = (uint8_t)nlen;
        memcpy(msg + n, name, nlen);
        n += nlen;
        msg[n++] = 0; msg[n++] = 0; msg[n++] = 0; msg[n++] = (uint8_t)plen;
        memcpy(msg + n, password, plen);
        n += plen;
        fastsocks_blake2s(key, msg, n, out);
    }

    /* The set: a power of two of 32-byte slots, at most half full; all zeros
       marks an empty slot (a MAC of all zeros is never added). */
    typedef struct {
        uint8_t (*slots)[32];
        size_t mask;
        size_t used;
    } fastsocks_logins;

    static int fastsocks_zero32(const uint8_t* d) {
        int i;
        uint8_t any = 0;
        for (i = 0; i < 32; i++)
            any |= d[i];
        return any == 0;
    }

    static int fastsocks_logins_has(const fastsocks_logins* t, const uint8_t* mac) {
        uint64_t k;
        size_t i;
        if (t->slots == NULL)
            return 0;
        memcpy(&k, mac, 8);
        for (i = (size_t)k & t->mask;; i = (i + 1) & t->mask) {
            if (memcmp(t->slots[i], mac, 32) == 0)
                return 1;
            if (fastsocks_zero32(t->slots[i]))
                return 0;
        }
    }

    static void fastsocks_logins_put(fastsocks_logins* t, const uint8_t* mac) {
        uint64_t k;
        size_t i;
        memcpy(&k, mac, 8);
        for (i = (size_t)k & t->mask; !fastsocks_zero32(t->slots[i]); i = (i + 1) & t->mask)
            if (memcmp(t->slots[i], mac, 32) == 0)
                return;
        memcpy(t->slots[i], mac, 32);
        t->used++;
    }

    /* Add ``mac``, growing the set first where it would be over half full:
       0, or -1 when out of memory (the set is as it was). */
    static int fastsocks_logins_add(fastsocks_logins* t, const uint8_t* mac) {
        if (fastsocks_zero32(mac) || fastsocks_logins_has(t, mac))
            return 0;
        if (t->slots == NULL || 2 * (t->used + 1) > t->mask + 1) {
            fastsocks_logins old = *t;
            size_t size = t->slots == NULL ? 16 : 2 * (t->mask + 1), i;
            t->slots = (uint8_t (*)[32])calloc(size, 32);
            if (t->slots == NULL) {
                *t = old;
                return -1;
            }
            t->mask = size - 1;
            t->used = 0;
            for (i = 0; old.slots != NULL && i <= old.mask; i++)
                if (!fastsocks_zero32(old.slots[i]))
                    fastsocks_logins_put(t, old.slots[i]);
            free(old.slots);
        }
        fastsocks_logins_put(t, mac);
        return 0;
    }

    static void fastsocks_logins_clear(fastsocks_logins* t) {
        free(t->slots);
        t->slots = NULL;
        t->mask = 0;
        t->used = 0;
    }
    """
    ctypedef struct fastsocks_logins:
        size_t used
    void fastsocks_login_mac(const unsigned char* key, const unsigned char* name, size_t nlen,
                             const unsigned char* password, size_t plen,
                             unsigned char* out) nogil
    int fastsocks_logins_has(const fastsocks_logins* t, const unsigned char* mac) nogil
    int fastsocks_logins_add(fastsocks_logins* t, const unsigned char* mac) nogil
    void fastsocks_logins_clear(fastsocks_logins* t) nogil


cdef extern from "<pthread.h>" nogil:
    ctypedef struct pthread_mutex_t:
        pass
    int pthread_mutex_init(pthread_mutex_t* m, void* attr)
    int pthread_mutex_destroy(pthread_mutex_t* m)
    int pthread_mutex_lock(pthread_mutex_t* m)
    int pthread_mutex_unlock(pthread_mutex_t* m)


# Why a pair ended; the names are in REASONS below.
cdef enum:
    R_EOF = 0
    R_CLIENT_RESET = 1
    R_UPSTREAM_RESET = 2
    R_IDLE = 3
    R_CLOSED = 4
    R_SHUTDOWN = 5
    R_ERROR = 6
    R_CONNECT_FAILED = 7      # the connect failed (Done.err): the client fd is handed back
    R_CONNECT_TIMEOUT = 8     # the connect took longer than its timeout: likewise
    R_CLIENT_CLOSED = 9       # the client left while the connect was in progress
    R_CONNECTED = 10          # not an end: the connect is done and the reply sent
    R_REQUEST = 11            # not an end: a negotiated CONNECT request waits for dial()
    R_HANDBACK = 12           # a negotiation the engine does not finish: the fd goes back
    R_DIALLING = 13           # not an end: a CONNECT the engine dials itself (a literal, a name remembered)

REASONS = ("eof", "client_reset", "upstream_reset", "idle_timeout", "closed", "shutdown",
           "error", "connect_failed", "connect_timeout", "client_closed", "connected",
           "request", "handback", "dialling")

cdef enum:
    CMD_ADD = 1
    CMD_CLOSE = 2
    CMD_CLOSE_ALL = 3
    CMD_STOP = 4
    CMD_DIAL = 5              # a negotiated pair's upstream (an Attach)
    CMD_END = 6               # a negotiated pair's last bytes, then close
    CMD_LISTEN = 7            # accept on a Listener (or change one's settings)
    CMD_UNLISTEN = 8          # stop accepting on one, close it

# Where a negotiated pair stands (Pair.neg); 0: relaying or connecting.
cdef enum:
    NEG_GREETING = 1
    NEG_REQUEST = 2
    NEG_WAITING = 3           # the request went to the loop; dial() or end() comes back
    NEG_LOGIN = 4             # X'05 02' went out: the RFC 1929 login comes
    NEG_BUF = 1088            # a greeting (≤ 257 bytes), a login (≤ 513), a request (≤ 262)

# What a negotiation may answer itself (negotiate()'s and listen()'s ``greet``).
cpdef enum:
    GREET_NONE = 0            # nothing: every greeting goes back to the loop
    GREET_OPEN = 1            # X'05 00' to a greeting that offers it
    GREET_LOGIN = 2           # X'05 02', then the logins the set vouches for (logins())

# What the engine sent before a report (its ``answered``).
cpdef enum:
    SENT_NOTHING = 0
    SENT_OPEN = 1             # X'05 00'
    SENT_METHOD = 2           # X'05 02'
    SENT_LOGIN = 3            # X'05 02', and X'01 00' to the login

# Pairs accepted by the engine take their ids from here up (the loop's from 1).
cdef uint64_t ACCEPTED_IDS = (<uint64_t>1) << 62

cdef enum:
    MAX_EVENTS = 256
    ACCEPT_BATCH = 64         # connections taken per listener event: others get their turn
    ACCEPT_PAUSE_MS = 250     # no descriptor left: accepting pauses this long
    SCAN_MS = 250
    PIPE_POOL_MAX = 64
    PIPE_SIZE = 1 << 20
    SMALL_READ = 16384        # copy mode's buffer; a read that fills it means bulk
    BULK_READ = 4 << 20       # bulk copying's buffer
    BULK_HELD_MAX = 64        # bulk buffers held by short writes, per process; past it, 16 KiB
    COPY_MSS = 16384          # auto: both segment sizes at least this: copy, else splice
    BULK_AUTO = 0
    BULK_SPLICE = 1
    BULK_COPY = 2

BULK_MODES = {"auto": BULK_AUTO, "splice": BULK_SPLICE, "copy": BULK_COPY}

# Bulk buffers that short writes hold, in every engine of this process (atomic),
# and how many they may hold (``Engine.bulk_held_max``).
cdef int bulk_held = 0
cdef int bulk_held_max = BULK_HELD_MAX


# Names the loop found with one address and nothing to race (``Engine.remember``,
# until their DNS answers expire): a CONNECT by one of them is dialled here,
# as an IP literal is.  A fixed table, allocated at the first name, probed
# NAME_PROBE slots from the name's hash; a full window gives up its entry
# that expires first.  Under ``Engine.lock``.
cdef enum:
    NAME_SLOTS = 1024         # a power of two
    NAME_PROBE = 8


cdef struct Name:
    int64_t until_ms          # CLOCK_MONOTONIC; 0: empty
    uint32_t hash
    unsigned char len
    bint v6
    unsigned char addr[16]
    char name[255]


cdef struct Pipe:
    int rfd
    int wfd
    Py_ssize_t size


# A token bucket: ``rate`` bytes per microsecond, at most ``burst`` saved up.
cdef struct Bucket:
    double rate
    double burst
    double tokens
    double wake               # read again once this many tokens are there
    int64_t stamp_us


# A rate for both directions, shared by the pairs (and the Python Throttle)
# that hold a reference to it; freed by the last.
cdef struct Shared:
    Bucket up
    Bucket down
    int refs


# One direction: bytes read from ``src`` go to ``dst``.
cdef struct Dir:
    int src
    int dst
    Pipe* pipe
    Py_ssize_t in_pipe        # bytes in the pipe, not yet written to dst
    char* pend                # bytes handed over with the pair, sent before anything else
    Py_ssize_t pend_len
    Py_ssize_t pend_off
    uint64_t nbytes           # bytes read from src (plus the handed-over ones)
    bint eof                  # src said EOF
    bint shut                 # dst was shut down for writing
    bint ready                # src may hold data (an event came; no EAGAIN since)
    bint hup                  # src reported RDHUP/HUP/ERR: read on to EOF or the error
    bint bulk                 # bulk (a copy-mode read filled its buffer): splice, or
    bint copying              # ... copying through the engine's 1 MiB buffer
    bint pend_big             # ``pend`` is a bulk buffer (counted in bulk_held)
    Bucket* buckets[2]        # rate limits on reading src (NULL: none)
    bint throttled            # over its rate: waits for wake_us, not for epoll
    int64_t wake_us


# What collect() reports of a finished pair.
cdef struct Done:
    uint64_t id
    uint64_t up
    uint64_t down
    int reason
    int err                   # the connect's errno (R_CONNECT_FAILED)
    bint dialled              # added while connecting: the callback takes five arguments
    int64_t connect_us        # how long the connect took (-1: it never completed)
    bint held                 # a negotiated pair: one callback, seven arguments
    int answered              # negotiated: what the engine sent (SENT_*)
    char* data                # negotiated: the bytes read (request, handback)
    Py_ssize_t dlen
    # An accepted pair's first report (``first``) introduces it to the loop:
    bint first
    int fd                    # the client's descriptor
    int key                   # the listener's
    int64_t born_us           # when it was accepted
    uintptr_t pair            # the Pair, whose second reference is the loop's from now
    char peer[28]             # a sockaddr_in or sockaddr_in6
    int peer_len
    # A pair dialled here that ended before its introduction (``quiet``):
    bint whole                # the end, with the request: its only report
    bint quiet                # it was quiet: the loop counts it out of Engine.quiet
    int64_t dial_us           # from its accept to its dial
    Done* next


cdef struct Pair:
    uint64_t id
    Dir up                    # client → upstream
    Dir down                  # upstream → client
    int fds[2]                # client, upstream
    int64_t last_ms
    int64_t idle_ms
    int reason
    bint dead
    bint connecting           # the upstream's connect(2) is still in progress
    int64_t deadline_ms       # ... until then at the latest
    int64_t added_us          # when add() was called (connecting pairs)
    int64_t connect_us        # how long the connect took; -1 until it completed
    int err                   # the failed connect's errno
    Shared* shared[2]         # the throttles this pair holds a reference to
    bint tlisted              # on the engine's list of throttled pairs
    Pair* tnext
    Pair* prev
    Pair* next
    Done* report              # allocated by add(), handed to collect() by _finish
    Done* hello               # connecting pairs: the "connected" report, likewise
    # Negotiated pairs (negotiate()): the handshake read here, then the loop's answer.
    int neg                   # NEG_*; 0 once dialled
    int greet                 # GREET_*: what it may answer itself
    int answered              # SENT_*: ... and did
    Py_ssize_t req            # where the request starts in nbuf (after the login)
    bint trail                # bytes came after the request (early data for the target)
    bint sole                 # no duplicate of either fd exists: close() leaves epoll
    char* nbuf
    Py_ssize_t nlen
    Done* asked               # the "request" (or "dialling") report
    int64_t dial_ms           # > 0: dial an IP literal's CONNECT here, within this
    int refs                  # negotiated: the engine's and the loop's; freed at 0
    # Accepted here (a Listener's): the loop learns of it with its first report.
    bint accepted
    bint told                 # ... which has been queued
    bint whole                # its listener takes whole reports (listen()'s ``ended``)
    bint quiet                # dialled here, its "dialling" report held back (p.asked)
    int key
    int64_t born_us
    char peer[28]
    int peer_len


# What dial() brings a waiting negotiated pair.
cdef struct Attach:
    int fd
    char* to_up
    Py_ssize_t up_len
    char* to_client
    Py_ssize_t client_len
    int64_t idle_ms
    double connect_timeout
    Shared* shared[2]
    Done* hello


# A listening socket the engine accepts on (listen()).
cdef struct Listener:
    int fd                    # the engine's own descriptor (a duplicate), closed by it
    int key                   # the loop's name for it
    int greet                 # what its connections' negotiations may do (negotiate())
    int64_t dial_ms
    int64_t idle_ms
    int64_t slow_ms           # a handshake unfinished after this long goes to the loop
    int64_t paused_ms         # accepting paused (no descriptor left) since then; 0: not
    bint whole                # a short pair dialled here comes as one report (``ended``)
    Listener* next


cdef struct Cmd:
    int kind
    uint64_t id
    int reason
    Pair* pair
    Attach* attach            # CMD_DIAL
    Listener* listener        # CMD_LISTEN
    char* data                # CMD_END
    Py_ssize_t dlen
    Cmd* next


cdef inline int64_t _now_ms() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts)
    return <int64_t>ts.tv_sec * 1000 + ts.tv_nsec // 1000000


cdef inline int64_t _now_us() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <int64_t>ts.tv_sec * 1000000 + ts.tv_nsec // 1000


cdef void _unref(Shared* s) noexcept nogil:
    if s != NULL and fastsocks_ref_add(&s.refs, -1) == 0:
        free(s)


cdef void _bucket_init(Bucket* b, double rate) noexcept nogil:
    # The same shape as limits.TokenBucket: a tenth of a second of burst (at
    # least 16 KiB).  A throttled reader waits for 20 ms worth (at least
    # 512 B): fewer, larger splices; waking for every 16 KiB cost 5.5 times
    # the CPU per byte (benchmarks/RESULTS.md, limits).
    b.rate = rate / 1e6
    b.burst = rate / 10.0 if rate / 10.0 > 16384.0 else 16384.0
    b.tokens = b.burst
    b.wake = rate / 50.0
    if b.wake < 512.0:
        b.wake = 512.0
    b.stamp_us = _now_us()


cdef class Throttle:
    """A bandwidth limit (bytes per second, each direction) for engine pairs.

    Pass it to ``Engine.add(..., throttles)``: one per connection, or one
    for all of a user's connections.  The C state lives until the last pair
    using it and this object are gone.
    """

    cdef Shared* s
    cdef readonly double rate

    def __cinit__(self, double rate):
        if not rate > 0:
            raise ValueError("rate must be positive")
        self.s = <Shared*>calloc(1, sizeof(Shared))
        if self.s == NULL:
            raise MemoryError()
        self.rate = rate
        _bucket_init(&self.s.up, rate)
        _bucket_init(&self.s.down, rate)
        self.s.refs = 1

    def __dealloc__(self):
        _unref(self.s)
        self.s = NULL


def _unclaimed(*args):
    pass


def login_mac(bytes key, bytes name, bytes password):
    """The MAC under which ``Engine.logins`` knows a login (names and passwords of
    at most 255 bytes, as RFC 1929 carries them)."""
    cdef unsigned char out[32]
    if PyBytes_GET_SIZE(key) != 32:
        raise ValueError("the login key is 32 bytes")
    if PyBytes_GET_SIZE(name) > 255 or PyBytes_GET_SIZE(password) > 255:
        raise ValueError("RFC 1929 names and passwords are at most 255 bytes")
    fastsocks_login_mac(<const unsigned char*>PyBytes_AS_STRING(key),
                        <const unsigned char*>PyBytes_AS_STRING(name), PyBytes_GET_SIZE(name),
                        <const unsigned char*>PyBytes_AS_STRING(password),
                        PyBytes_GET_SIZE(password), out)
    return PyBytes_FromStringAndSize(<char*>out, 32)


def first_byte(int fd):
    """The first byte queued on a fresh connection, without taking it: -1 when
    none has come yet (or the client has gone; the engine will see that)."""
    cdef unsigned char c
    if recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT) == 1:
        return c
    return -1


# __dealloc__ reads _held (the negotiated pairs the loop still holds): the
# cycle collector must not have cleared it first.
@cython.no_gc_clear
cdef class Engine:
    """One relay thread and the pairs it owns.  Not thread-safe from Python:
    call its methods from the event loop thread only."""

    cdef int epfd
    cdef int cmd_fd               # wakes the engine: commands are queued
    cdef int done_fd              # wakes the event loop: pairs finished
    cdef pthread_mutex_t lock
    cdef Cmd* cmds                # LIFO under lock; reversed when taken
    cdef Done* done               # finished pairs' reports, newest first, under lock
    cdef Pair* pairs              # all live pairs (engine thread only)
    cdef Pair* zombies            # closed in this batch, freed after it
    cdef Pair* throttled          # pairs with a direction waiting for its rate
    cdef Pipe* pool[PIPE_POOL_MAX]
    cdef int pool_len
    cdef Py_ssize_t pipe_size
    cdef char* scratch            # bulk copying reads here (BULK_READ bytes; engine thread)
    cdef int bulk_mode            # BULK_* (atomic: set by the loop, read by the engine)
    cdef int switched[2]          # directions gone bulk: [0] splicing, [1] copying (atomic)
    cdef uint64_t next_id
    cdef readonly Py_ssize_t active
    cdef bint stopping
    cdef bint reported            # a pair finished in this batch: wake the loop after it
    cdef int64_t hello_ms         # when the oldest report queued by _report_later came (unsignalled)
    cdef Listener* listeners      # engine thread only
    cdef uint64_t next_accepted   # ids of pairs accepted here (another range than next_id's)
    cdef int unseen               # accepted, not yet introduced to the loop (atomic)
    cdef int quiet                # ... of which dialled here, handshake over (atomic)
    cdef int accept_err           # the errno that paused accepting; 0 when reported
    # How many more unfinished handshakes the loop's quota leaves the engine
    # (control/handshakes.py); a connection accepted beyond it goes to the
    # loop at once, which refuses it.  -1: no quota.
    cdef public int handshake_room
    cdef object thread
    cdef object _callbacks        # id -> callable(up, down, reason[, err, connect_us])
    cdef object _held             # negotiated pairs: id -> the Pair's address (the loop's ref)
    cdef object _accepting        # listener key -> callable(id, fd, peer, age, dialling)
    cdef object _ending           # listener key -> its ``ended`` (whole reports)
    cdef public object on_exhausted  # callable(errno): accepting paused, no descriptor left
    # RFC 1929 logins the engine answers itself (GREET_LOGIN): a set of MACs
    # under ``login_key``, under ``lock``; none while a source backs off.
    cdef fastsocks_logins login_set
    cdef unsigned char login_key[32]
    cdef int64_t login_wait_us    # until then (CLOCK_MONOTONIC), every login goes to the loop
    cdef Name* names              # NAME_SLOTS names dialled here (remember()), under ``lock``
    cdef int name_dials           # CONNECTs by name dialled here (atomic)

    def __cinit__(self):
        self.epfd = -1
        self.cmd_fd = -1
        self.done_fd = -1
        pthread_mutex_init(&self.lock, NULL)
        self.cmds = NULL
        self.done = NULL
        self.pairs = NULL
        self.zombies = NULL
        self.throttled = NULL
        self.pool_len = 0
        self.pipe_size = PIPE_SIZE
        self.scratch = NULL
        self.names = NULL
        self.name_dials = 0
        self.bulk_mode = BULK_AUTO
        self.switched[0] = 0
        self.switched[1] = 0
        self.next_id = 1
        self.active = 0
        self.stopping = False
        self.listeners = NULL
        self.next_accepted = ACCEPTED_IDS
        self.unseen = 0
        self.quiet = 0
        self.accept_err = 0
        self.handshake_room = -1
        self._callbacks = {}
        self._held = {}
        self._accepting = {}
        self._ending = {}

    def __init__(self):
        cdef epoll_event ev
        self.epfd = epoll_create1(EPOLL_CLOEXEC)
        self.cmd_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)
        self.done_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)
        if self.epfd < 0 or self.cmd_fd < 0 or self.done_fd < 0:
            raise OSError(errno, _os.strerror(errno))
        ev.events = EPOLLIN
        ev.data.ptr = NULL        # NULL marks the command eventfd
        if epoll_ctl(self.epfd, EPOLL_CTL_ADD, self.cmd_fd, &ev) < 0:
            raise OSError(errno, _os.strerror(errno))

    def __dealloc__(self):
        cdef Cmd* c
        cdef Done* d
        cdef Listener* l
        cdef int i
        while self.listeners != NULL:
            l = self.listeners
            self.listeners = l.next
            close(l.fd)
            free(l)
        while self.cmds != NULL:
            c = self.cmds
            self.cmds = c.next
            _drop_command(c)
        while self.pairs != NULL:
            _unlink_free(self, self.pairs)
        held = self._held
        if held is not None:              # finished pairs whose report was not collected
            for address in held.values():
                _release(<Pair*><uintptr_t>address)
            held.clear()
        for i in range(self.pool_len):
            close(self.pool[i].rfd)
            close(self.pool[i].wfd)
            free(self.pool[i])
        free(self.scratch)
        while self.done != NULL:
            d = self.done
            self.done = d.next
            _free_done(d)
        for fd in (self.epfd, self.cmd_fd, self.done_fd):
            if fd >= 0:
                close(fd)
        fastsocks_logins_clear(&self.login_set)
        free(self.names)
        pthread_mutex_destroy(&self.lock)

    @property
    def done_fileno(self):
        """Readable when finished pairs wait for ``collect()``."""
        return self.done_fd

    def start(self):
        """Run the engine in its own thread (daemon: it never blocks exit)."""
        self.thread = _threading.Thread(target=self._run, name="fastsocks-relay", daemon=True)
        self.thread.start()

    def _run(self):
        with nogil:
            _engine_loop(self)

    def throttle(self, double rate):
        """A bandwidth limit of ``rate`` bytes per second for ``add()``."""
        return Throttle(rate)

    def add(self, int client_fd, int upstream_fd, bytes to_upstream, bytes to_client,
            double idle_timeout, callback, tuple throttles=(), *, bint nonblocking=False,
            double connect_timeout=0.0):
        """Hand over a pair; the engine owns (and will close) both fds.

        ``to_upstream`` / ``to_client`` are sent before anything read later;
        ``callback(bytes_up, bytes_down, reason)`` runs on the event loop
        once the pair is finished, from ``collect()``.  ``throttles``: up to
        two ``Throttle`` objects limiting both directions.  ``nonblocking``:
        the caller knows both fds are non-blocking already (an event loop's
        sockets and their dups are), which saves two ioctls.

        ``connect_timeout`` > 0: ``upstream_fd`` is a socket whose
        non-blocking connect(2) is in progress.  Nothing is sent or read
        until it completes (within ``connect_timeout`` seconds); then
        ``to_client`` (the success reply) goes out first.  The callback then
        takes two more arguments, ``err`` and ``connect_us`` (how long the
        connect took, -1 if it never completed).  If the connect fails the
        reason is ``connect_failed`` (``err`` its errno) or
        ``connect_timeout``, and ``client_fd`` is NOT closed: the caller owns
        it again, to send its refusal.  A client that closes while the
        connect is in progress ends the pair as ``client_closed``.
        """
        cdef Pair* p
        cdef Throttle t
        cdef int i
        if len(throttles) > 2:
            raise ValueError("at most two throttles per pair")
        # The engine thread must never block: whatever the fds were, they
        # are non-blocking from here on.
        if not nonblocking:
            _os.set_blocking(client_fd, False)
            _os.set_blocking(upstream_fd, False)
        p = <Pair*>calloc(1, sizeof(Pair))
        if p == NULL:
            raise MemoryError()
        # The report is allocated now, where a failure can still be raised:
        # the engine thread never allocates to report a finished pair, so no
        # pair can end unreported (its callback, which frees its limit slot,
        # always runs).
        p.report = <Done*>calloc(1, sizeof(Done))
        if p.report == NULL:
            free(p)
            raise MemoryError()
        p.id = self.next_id
        self.next_id += 1
        p.fds[0] = client_fd
        p.fds[1] = upstream_fd
        p.idle_ms = <int64_t>(idle_timeout * 1000) if idle_timeout > 0 else 0
        if connect_timeout > 0:
            p.hello = <Done*>calloc(1, sizeof(Done))
            if p.hello == NULL:
                free(p.report)
                free(p)
                raise MemoryError()
            p.connecting = True
            p.added_us = _now_us()
            p.deadline_ms = _now_ms() + <int64_t>(connect_timeout * 1000)
            p.connect_us = -1
            p.report.dialled = True
        p.up.src = client_fd
        p.up.dst = upstream_fd
        p.down.src = upstream_fd
        p.down.dst = client_fd
        for i in range(len(throttles)):
            t = <Throttle?>throttles[i]
            fastsocks_ref_add(&t.s.refs, 1)
            p.shared[i] = t.s
            p.up.buckets[i] = &t.s.up
            p.down.buckets[i] = &t.s.down
        if not _set_pending(&p.up, to_upstream, True) or not _set_pending(&p.down, to_client, False):
            _free_pair(p, False)
            raise MemoryError()
        self._callbacks[p.id] = callback
        self.active += 1
        self._command(CMD_ADD, p.id, 0, p)
        return p.id

    def negotiate(self, int client_fd, int greet, callback, double dial_timeout=0.0,
                  double idle_timeout=0.0):
        """Take an accepted connection's SOCKS5 handshake; the engine owns the fd.

        The engine reads the greeting and, where ``greet`` says what the
        server would choose and the client offers it, answers it itself:
        X'05 00' (GREET_OPEN), or X'05 02' (GREET_LOGIN) and then the RFC 1929
        login with X'01 00' where the set of known logins has it (``logins``);
        then it reads the request.  ``callback(reason, data, answered,
        bytes_up, bytes_down, err, connect_us)`` runs on the loop, with
        ``answered`` what the engine sent (SENT_*):

        * ``request``: a well-formed CONNECT came (``data``: every byte read,
          greeting first).  The pair waits for ``dial()`` or ``end()``.
        * ``dialling``: with ``dial_timeout`` > 0, a CONNECT to an IP literal
          (not an IPv4-mapped one) is dialled here at once: the reply (BND =
          the outbound socket's address) and the bytes after the request go
          as with ``dial(..., connect_timeout=dial_timeout)``, relaying with
          ``idle_timeout``; ``data`` is the greeting and the request.  A
          connect that fails at once is reported as ``request`` instead.
        * ``handback``: anything else (another protocol, no X'00' offered, a
          command other than CONNECT, a malformed message, a login the set
          does not know): ``client_fd`` is the caller's again, open, with
          ``data`` read from it.
        * then as a pair added with ``connect_timeout`` (``connected``,
          ``connect_failed`` ...), or its end (``client_closed`` when the
          client leaves before ``dial()``; ``closed`` after ``end()``).
        """
        cdef Pair* p
        _os.set_blocking(client_fd, False)
        p = _negotiated(client_fd, greet,
                        <int64_t>(dial_timeout * 1000) if dial_timeout > 0 else 0,
                        <int64_t>(idle_timeout * 1000) if idle_timeout > 0 else 0)
        if p == NULL:
            raise MemoryError()
        p.id = self.next_id
        self.next_id += 1
        self._callbacks[p.id] = callback
        self._held[p.id] = <uintptr_t>p
        self.active += 1
        try:
            self._command(CMD_ADD, p.id, 0, p)
        except MemoryError:
            del self._callbacks[p.id], self._held[p.id]
            self.active -= 1
            _free_pair(p, False)
            raise
        return p.id

    def dial(self, uint64_t pair_id, int upstream_fd, bytes to_upstream, bytes to_client,
             double idle_timeout, tuple throttles=(), double connect_timeout=0.0):
        """Give a negotiated pair its upstream, as ``add()`` would; the engine owns the fd.

        ``to_client`` (the reply) goes out first, once the connect (if
        ``connect_timeout`` > 0) is done.  If the pair has already ended
        (the client left) the engine closes ``upstream_fd``; the end is
        reported as usual.  False when it ended and was already reported.
        """
        cdef Attach* a
        cdef Throttle t
        cdef Pair* p
        cdef int i
        address = self._held.get(pair_id)
        if address is None:
            _os.close(upstream_fd)
            return False
        p = <Pair*><uintptr_t>address
        if len(throttles) > 2:
            raise ValueError("at most two throttles per pair")
        a = <Attach*>calloc(1, sizeof(Attach))
        if a == NULL:
            raise MemoryError()
        a.fd = upstream_fd
        a.idle_ms = <int64_t>(idle_timeout * 1000) if idle_timeout > 0 else 0
        a.connect_timeout = connect_timeout
        if connect_timeout > 0:
            a.hello = <Done*>calloc(1, sizeof(Done))
        if not _copy_out(to_upstream, &a.to_up, &a.up_len) \
                or not _copy_out(to_client, &a.to_client, &a.client_len) \
                or (connect_timeout > 0 and a.hello == NULL):
            a.fd = -1             # still the caller's: it closes it on the error
            _free_attach(a)
            raise MemoryError()
        if a.hello != NULL:
            a.hello.held = True
        for i in range(len(throttles)):
            t = <Throttle?>throttles[i]
            fastsocks_ref_add(&t.s.refs, 1)
            a.shared[i] = t.s
        fastsocks_ref_add(&p.refs, 1)  # the command's, dropped when it is done
        self._command(CMD_DIAL, pair_id, 0, p, a)
        return True

    def end(self, uint64_t pair_id, bytes last=b""):
        """Send a negotiated pair's client ``last`` (a refusal), then close it.

        Bytes the client sent and nobody read are read and dropped first, so
        that the close sends a FIN, not an RST that could destroy the
        refusal before the client reads it.  Reported as ``closed``.
        """
        cdef char* data = NULL
        cdef Py_ssize_t n = 0
        cdef Pair* p
        address = self._held.get(pair_id)
        if address is None:
            return
        p = <Pair*><uintptr_t>address
        if not _copy_out(last, &data, &n):
            raise MemoryError()
        fastsocks_ref_add(&p.refs, 1)
        self._command(CMD_END, pair_id, 0, p, NULL, data, n)

    def listen(self, int fd, int key, accepted, int greet, double dial_timeout=0.0,
               double idle_timeout=0.0, double slow=0.25, ended=None):
        """Accept connections on the listening socket ``fd`` here, and negotiate them.

        The engine owns ``fd`` (a duplicate of the loop's socket, say) and
        closes it on ``unlisten(key)`` or ``stop()``.  Each connection is
        accepted non-blocking and negotiated as by ``negotiate(fd, greet,
        ..., dial_timeout, idle_timeout)``; the loop learns of it with its
        first report, before which ``accepted(id, fd, peer, age, dialling)``
        gives the callback for it (``peer`` as ``socket.accept`` gives it,
        ``age`` the seconds since the accept, ``dialling`` whether the
        handshake is over and the engine dials).  A handshake unfinished
        after ``slow`` seconds (checked every quarter second) is handed back
        with the bytes read so far.  With no descriptor left, accepting
        pauses for a quarter second, and ``on_exhausted(errno)`` is called.

        With ``ended``, a connection the engine dials stays quiet until its
        first scan (within a quarter second), and is introduced then as
        above; one that connects and ends before is never introduced: its
        one report goes to ``ended(peer, data, answered, up, down, reason,
        handshake, duration)`` (the handshake's bytes and what the engine
        sent, as a "dialling" report has them; the bytes relayed and why it
        ended, as an end has them; the seconds from accept to the reply and
        to the end).  A connect that fails or times out, or a client that
        leaves before it is done, is introduced first and reported as ever.
        New settings without ``ended`` make no pair quiet from then on; the
        pairs quiet before still go to the ``ended`` they had.

        ``fd`` -1: only new settings for the listener ``key``.
        """
        cdef Listener* l
        if fd >= 0:
            _os.set_blocking(fd, False)  # the engine thread never blocks (shared with dups)
        l = <Listener*>calloc(1, sizeof(Listener))
        if l == NULL:
            raise MemoryError()
        l.fd = fd
        l.key = key
        l.greet = greet
        l.dial_ms = <int64_t>(dial_timeout * 1000) if dial_timeout > 0 else 0
        l.idle_ms = <int64_t>(idle_timeout * 1000) if idle_timeout > 0 else 0
        l.slow_ms = <int64_t>(slow * 1000) if slow > 0 else 0
        l.whole = ended is not None
        self._accepting[key] = accepted
        if ended is not None:     # settings without it keep it for the quiet pairs before
            self._ending[key] = ended
        self._command(CMD_LISTEN, 0, 0, NULL, NULL, NULL, 0, l)

    def unlisten(self, int key):
        """Stop accepting on the listener ``key``; the engine closes its descriptor.
        Connections accepted before still come, with their reports."""
        self._command(CMD_UNLISTEN, <uint64_t>key, 0, NULL)

    @property
    def bulk(self):
        """How a direction relays once it is bulk (its first full 16 KiB read):
        ``"splice"`` (socket → pipe → socket), ``"copy"`` (recv and send
        through the engine's 4 MiB buffer), or ``"auto"``: copy where both
        sockets' TCP segment size is at least 16 KiB (loopback and other
        64 KiB-MTU links, where copying was measured the faster), splice
        elsewhere.  Read when a direction goes bulk, so a change applies to
        the directions that go bulk after it."""
        mode = fastsocks_ref_add(&self.bulk_mode, 0)
        return next(name for name, value in BULK_MODES.items() if value == mode)

    @bulk.setter
    def bulk(self, str mode):
        if mode not in BULK_MODES:
            raise ValueError(f"bulk mode must be one of {', '.join(BULK_MODES)}, not {mode!r}")
        fastsocks_store(&self.bulk_mode, BULK_MODES[mode])

    @property
    def bulk_switches(self):
        """How many directions went bulk here: (by splice, by copying)."""
        return fastsocks_ref_add(&self.switched[0], 0), fastsocks_ref_add(&self.switched[1], 0)

    @property
    def bulk_held(self):
        """Bulk buffers (4 MiB each) that short writes hold, in every engine of
        this process: a direction whose destination took only part of a read
        keeps its buffer until the rest is sent."""
        return fastsocks_ref_add(&bulk_held, 0)

    @property
    def bulk_held_max(self):
        """At most this many bulk buffers are held at once in this process (64:
        256 MiB); past it, bulk copying reads 16 KiB at a time, so that slow
        readers cannot make the server hold more."""
        return fastsocks_ref_add(&bulk_held_max, 0)

    @bulk_held_max.setter
    def bulk_held_max(self, int n):
        if n < 0:
            raise ValueError("bulk_held_max must be 0 or more")
        fastsocks_store(&bulk_held_max, n)

    @property
    def unseen(self):
        """Connections accepted here whose first report the loop has not had yet."""
        return fastsocks_ref_add(&self.unseen, 0)

    @property
    def shaking(self):
        """Of ``unseen``, those still in their handshake (not the quiet ones dialled)."""
        return max(0, _shaking(self))

    def logins(self, bytes key=None, macs=()):
        """The RFC 1929 logins answered here (GREET_LOGIN): none, or ``macs`` under ``key``.

        A MAC is BLAKE2s-256 under ``key`` (32 bytes) of the user name and the
        password, each after its length in 4 bytes, big-endian (``login_mac``;
        ``Users`` makes the same).  Replaces the set; None: no login is known.
        """
        if key is not None and PyBytes_GET_SIZE(key) != 32:
            raise ValueError("the login key is 32 bytes")
        pthread_mutex_lock(&self.lock)
        fastsocks_logins_clear(&self.login_set)
        if key is not None:
            memcpy(self.login_key, PyBytes_AS_STRING(key), 32)
        pthread_mutex_unlock(&self.lock)
        for mac in macs:
            self.add_login(mac)

    def add_login(self, bytes mac):
        """One more login the engine may answer X'01 00' (a good check's MAC)."""
        cdef int failed
        if PyBytes_GET_SIZE(mac) != 32:
            raise ValueError("a login's MAC is 32 bytes")
        pthread_mutex_lock(&self.lock)
        failed = fastsocks_logins_add(&self.login_set, <const unsigned char*>PyBytes_AS_STRING(mac))
        pthread_mutex_unlock(&self.lock)
        if failed:
            raise MemoryError()

    def remember(self, bytes name, bytes address, double until):
        """Dial a CONNECT by ``name`` here, to ``address`` (4 or 16 bytes,
        packed), until ``until`` (time.monotonic()), as an IP literal is.

        For a name the loop's DNS cache knows with that one address and
        nothing to race (``cached_only_address``), where nothing about a
        request needs the loop (``listen``'s ``dial_timeout``).  The name is
        matched byte for byte as the request carries it.  Replaces what was
        kept for the name; the table is bounded (NAME_SLOTS, the entries
        that expire first give way).
        """
        cdef Py_ssize_t n = PyBytes_GET_SIZE(name)
        cdef Py_ssize_t alen = PyBytes_GET_SIZE(address)
        cdef const unsigned char* s = <const unsigned char*>PyBytes_AS_STRING(name)
        cdef uint32_t h
        cdef int64_t now = _now_ms()
        cdef Name* slot
        cdef Name* pick = NULL
        cdef int i
        if not 0 < n < 256:
            raise ValueError("a name is 1 to 255 bytes")
        if alen != 4 and alen != 16:
            raise ValueError("an address is 4 or 16 bytes")
        h = _name_hash(s, n)
        pthread_mutex_lock(&self.lock)
        if self.names == NULL:
            self.names = <Name*>calloc(NAME_SLOTS, sizeof(Name))
            if self.names == NULL:
                pthread_mutex_unlock(&self.lock)
                raise MemoryError()
        for i in range(NAME_PROBE):
            slot = &self.names[(h + <uint32_t>i) & (NAME_SLOTS - 1)]
            if slot.until_ms and slot.hash == h and slot.len == n and memcmp(slot.name, s, n) == 0:
                pick = slot
                break
            if pick == NULL or (pick.until_ms > now and slot.until_ms < pick.until_ms):
                pick = slot           # an empty or expired slot, else the soonest to expire
        pick.until_ms = <int64_t>(until * 1000)
        pick.hash = h
        pick.len = <unsigned char>n
        pick.v6 = alen == 16
        memcpy(pick.addr, PyBytes_AS_STRING(address), alen)
        memcpy(pick.name, s, n)
        pthread_mutex_unlock(&self.lock)

    def forget(self):
        """Dial no name here until ``remember`` again (a reload, a new resolver)."""
        pthread_mutex_lock(&self.lock)
        free(self.names)
        self.names = NULL
        pthread_mutex_unlock(&self.lock)

    @property
    def name_dials(self):
        """CONNECTs by name dialled here (``remember``), since the engine started."""
        return fastsocks_ref_add(&self.name_dials, 0)

    def pause_logins(self, double until):
        """Hand every login to the loop until ``until`` (time.monotonic()): a source
        backs off after its failures (control/authgate.py), which only the loop judges."""
        cdef int64_t wait_us = <int64_t>(until * 1e6)
        pthread_mutex_lock(&self.lock)
        if wait_us > self.login_wait_us:
            self.login_wait_us = wait_us
        pthread_mutex_unlock(&self.lock)

    def close(self, uint64_t pair_id, str reason="closed"):
        """Ask the engine to close one pair (it is reported as usual)."""
        self._command(CMD_CLOSE, pair_id, REASONS.index(reason), NULL)

    def close_all(self, str reason="shutdown"):
        self._command(CMD_CLOSE_ALL, 0, REASONS.index(reason), NULL)

    def stop(self):
        """Close every pair and end the thread; waits for it."""
        self._command(CMD_STOP, 0, R_SHUTDOWN, NULL)
        if self.thread is not None:
            self.thread.join()
            self.thread = None

    cdef _command(self, int kind, uint64_t pair_id, int reason, Pair* pair,
                  Attach* attach=NULL, char* data=NULL, Py_ssize_t dlen=0,
                  Listener* listener=NULL):
        cdef Cmd* c = <Cmd*>calloc(1, sizeof(Cmd))
        cdef uint64_t one = 1
        cdef bint wake
        if c == NULL:
            if attach != NULL:
                attach.fd = -1
                _free_attach(attach)
            free(data)
            free(listener)        # its fd is still the caller's
            if pair != NULL and kind != CMD_ADD:
                _release(pair)
            raise MemoryError()
        c.kind = kind
        c.id = pair_id
        c.reason = reason
        c.pair = pair
        c.attach = attach
        c.listener = listener
        c.data = data
        c.dlen = dlen
        pthread_mutex_lock(&self.lock)
        c.next = self.cmds
        wake = c.next == NULL
        self.cmds = c
        pthread_mutex_unlock(&self.lock)
        # Commands queued behind one not yet taken ride on its wake-up: the
        # engine reads the eventfd before it takes the whole queue (_commands).
        if wake:
            write(self.cmd_fd, &one, 8)

    def collect(self):
        """Run the callbacks of finished pairs (call when done_fileno is readable).

        Pairs added while connecting are also reported once connected
        (reason ``connected``, the pair going on) if they still relay at the
        engine's next scan, within a quarter second of the connect; one that
        ends before reports only its end, whose ``connect_us`` (>= 0) says
        that it connected and its reply went out.  Returns how many pairs
        finished.
        """
        cdef uint64_t counter
        cdef Done* d
        cdef Done* nxt
        cdef Done* items = NULL
        cdef Py_ssize_t n = 0
        read(self.done_fd, &counter, 8)
        pthread_mutex_lock(&self.lock)
        d = self.done
        self.done = NULL
        err = self.accept_err
        self.accept_err = 0
        pthread_mutex_unlock(&self.lock)
        if err and self.on_exhausted is not None:
            try:
                self.on_exhausted(err)
            except Exception:
                _log.exception("accept failure callback failed")
        while d != NULL:              # oldest first
            nxt = d.next
            d.next = items
            items = d
            d = nxt
        try:
            while items != NULL:
                d = items
                items = d.next
                try:
                    if d.whole:
                        n += self._whole(d)
                        continue
                    if d.first:
                        self._introduce(d)
                    if d.held:
                        n += self._held_report(d)
                        continue
                    if d.reason == R_CONNECTED:  # the pair goes on: its callback stays
                        callback = self._callbacks.get(d.id)
                        if callback is not None:
                            callback(0, 0, "connected", 0, d.connect_us)
                        continue
                    n += 1
                    self.active -= 1
                    callback = self._callbacks.pop(d.id, None)
                    if callback is None:
                        pass
                    elif d.dialled:
                        callback(d.up, d.down, REASONS[d.reason], d.err, d.connect_us)
                    else:
                        callback(d.up, d.down, REASONS[d.reason])
                except Exception:
                    _log.exception("relay close callback failed")
                finally:
                    free(d.data)
                    free(d)
        finally:
            while items != NULL:      # only when something past Exception escaped
                d = items
                items = d.next
                _free_done(d)
        return n

    cdef _introduce(self, Done* d):
        """An accepted pair's first report: the loop takes its reference and a callback."""
        d.first = False           # its reference is the loop's now (_held)
        fastsocks_ref_add(&self.unseen, -1)
        if d.quiet:
            fastsocks_ref_add(&self.quiet, -1)
        self._held[d.id] = d.pair
        self.active += 1
        accepted = self._accepting.get(d.key)
        callback = None
        if accepted is not None:
            try:
                callback = accepted(d.id, d.fd, _peer_of(d), (_now_us() - d.born_us) / 1e6,
                                    d.reason == R_DIALLING)
            except Exception:
                _log.exception("a connection the engine accepted was not taken")
        if callback is None:      # nobody takes it: the end, reported to nobody
            callback = _unclaimed
            if d.reason == R_REQUEST or d.reason == R_DIALLING:
                self.end(d.id)
            elif d.reason == R_HANDBACK or d.reason == R_CONNECT_FAILED \
                    or d.reason == R_CONNECT_TIMEOUT:
                close(d.fd)
        self._callbacks[d.id] = callback

    cdef int _whole(self, Done* d) except -1:
        """A pair dialled here that ended unintroduced: its one report, to ``ended``."""
        d.first = False
        fastsocks_ref_add(&self.unseen, -1)
        fastsocks_ref_add(&self.quiet, -1)
        _release(<Pair*>d.pair)   # the loop's reference, never taken
        d.pair = 0
        ended = self._ending.get(d.key)
        if ended is not None:
            ended(_peer_of(d), PyBytes_FromStringAndSize(d.data, d.dlen), d.answered, d.up,
                  d.down, REASONS[d.reason], (d.dial_us + d.connect_us) / 1e6,
                  (_now_us() - d.born_us) / 1e6)
        return 1

    cdef int _held_report(self, Done* d) except -1:
        """A negotiated pair's report: its callback, and on its end the loop's ref."""
        cdef bint final = d.reason != R_CONNECTED and d.reason != R_REQUEST \
            and d.reason != R_DIALLING
        data = PyBytes_FromStringAndSize(d.data, d.dlen) if d.data != NULL else b""
        if final:
            self.active -= 1
            callback = self._callbacks.pop(d.id, None)
            address = self._held.pop(d.id, None)
            if address is not None:
                _release(<Pair*><uintptr_t>address)
        else:
            callback = self._callbacks.get(d.id)
        if callback is not None:
            callback(REASONS[d.reason], data, d.answered, d.up, d.down, d.err, d.connect_us)
        return 1 if final else 0


cdef object _peer_of(Done* d):
    """An introduction's peer, as ``socket.accept`` gives it."""
    cdef char host[46]
    cdef int port = 0
    cdef unsigned int flow = 0, scope = 0
    cdef int family = fastsocks_peer(d.peer, d.peer_len, host, &port, &flow, &scope)
    if family == AF_INET:
        return (host.decode(), port)
    if family == AF_INET6:
        return (host.decode(), port, flow, scope)
    return None


cdef bint _set_pending(Dir* d, bytes data, bint count):
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    if n == 0:
        return True
    d.pend = <char*>malloc(n)
    if d.pend == NULL:
        return False
    memcpy(d.pend, PyBytes_AS_STRING(data), n)
    d.pend_len = n
    if count:  # payload the client sent early, not a protocol reply
        d.nbytes = n
    return True


cdef void _free_pair(Pair* p, bint close_fds) noexcept nogil:
    if close_fds:
        close(p.fds[0])
        if p.fds[1] >= 0:
            close(p.fds[1])
    _unref(p.shared[0])
    _unref(p.shared[1])
    free(p.report)                # NULL once _finish has handed it over
    free(p.hello)                 # NULL once the connect was reported
    if p.asked != NULL:           # NULL once the request was reported
        free(p.asked.data)        # a quiet pair's request, held back
        free(p.asked)
    free(p.nbuf)                  # NULL once the bytes went with a report
    if p.up.pend_big:
        fastsocks_ref_add(&bulk_held, -1)
    if p.down.pend_big:
        fastsocks_ref_add(&bulk_held, -1)
    free(p.up.pend)
    free(p.down.pend)
    free(p)


cdef Pair* _negotiated(int fd, int greet, int64_t dial_ms, int64_t idle_ms) noexcept nogil:
    """A pair whose client ``fd`` the engine negotiates (negotiate(), or an accept), its
    reports allocated and two references (the engine's, the loop's); NULL when out
    of memory (``fd`` is still the caller's)."""
    cdef Pair* p = <Pair*>calloc(1, sizeof(Pair))
    if p == NULL:
        return NULL
    p.report = <Done*>calloc(1, sizeof(Done))
    p.asked = <Done*>calloc(1, sizeof(Done))
    p.nbuf = <char*>malloc(NEG_BUF)
    if dial_ms:
        p.hello = <Done*>calloc(1, sizeof(Done))
        p.dial_ms = dial_ms
        p.idle_ms = idle_ms
    if p.report == NULL or p.asked == NULL or p.nbuf == NULL or (dial_ms and p.hello == NULL):
        _free_pair(p, False)
        return NULL
    if p.hello != NULL:
        p.hello.held = True
    p.report.held = True
    p.asked.held = True
    p.fds[0] = fd
    p.fds[1] = -1
    p.up.src = fd
    p.up.dst = -1
    p.down.src = -1
    p.down.dst = fd
    p.neg = NEG_GREETING
    p.greet = greet
    p.sole = True
    p.connect_us = -1
    p.refs = 2
    return p


cdef void _release(Pair* p) noexcept nogil:
    """Drop one reference to a negotiated pair (the engine's, the loop's, a command's)."""
    if fastsocks_ref_add(&p.refs, -1) == 0:
        _free_pair(p, False)


cdef inline void _drop(Pair* p) noexcept nogil:
    """The engine is done with a finished pair."""
    if p.refs:
        _release(p)
    else:
        _free_pair(p, False)


cdef void _unlink_free(Engine e, Pair* p) noexcept nogil:
    if p.prev != NULL:
        p.prev.next = p.next
    else:
        e.pairs = p.next
    if p.next != NULL:
        p.next.prev = p.prev
    if not p.dead:
        p.dead = True
        close(p.fds[0])
        if p.fds[1] >= 0:
            close(p.fds[1])
    if p.accepted and not p.told:
        fastsocks_ref_add(&p.refs, -1)   # the loop's, which it never got
    _drop(p)


cdef void _free_done(Done* d) noexcept nogil:
    """A report nobody will collect; an introduction's reference to its pair goes too."""
    if d.first and d.pair:
        _release(<Pair*>d.pair)
    free(d.data)
    free(d)


cdef bint _copy_out(bytes data, char** out, Py_ssize_t* n):
    """``data`` into a malloc'd buffer (NULL for none); False when out of memory."""
    n[0] = PyBytes_GET_SIZE(data)
    out[0] = NULL
    if n[0] == 0:
        return True
    out[0] = <char*>malloc(n[0])
    if out[0] == NULL:
        return False
    memcpy(out[0], PyBytes_AS_STRING(data), n[0])
    return True


cdef void _free_attach(Attach* a) noexcept nogil:
    if a.fd >= 0:
        close(a.fd)
    free(a.to_up)
    free(a.to_client)
    _unref(a.shared[0])
    _unref(a.shared[1])
    free(a.hello)
    free(a)


cdef void _drop_command(Cmd* c) noexcept nogil:
    """A command the engine will never carry out (it is gone): free what it holds."""
    cdef Pair* p = c.pair
    if c.kind == CMD_ADD and p != NULL:
        if p.refs:            # negotiated: the loop still holds its reference
            p.dead = True
            close(p.fds[0])
            _release(p)
        else:
            _free_pair(p, True)
    elif c.kind == CMD_DIAL or c.kind == CMD_END:
        if c.attach != NULL:
            _free_attach(c.attach)
        free(c.data)
        _release(p)
    elif c.kind == CMD_LISTEN and c.listener != NULL:
        close(c.listener.fd)
        free(c.listener)
    free(c)


# -- pipes ------------------------------------------------------------------

cdef Pipe* _pipe_get(Engine e) noexcept nogil:
    cdef int fds[2]
    cdef Pipe* pipe
    if e.pool_len > 0:
        e.pool_len -= 1
        return e.pool[e.pool_len]
    if pipe2(fds, O_NONBLOCK | O_CLOEXEC) < 0:
        return NULL
    pipe = <Pipe*>malloc(sizeof(Pipe))
    if pipe == NULL:
        close(fds[0])
        close(fds[1])
        return NULL
    pipe.rfd = fds[0]
    pipe.wfd = fds[1]
    # 1 MiB pipes move more per syscall; unprivileged users may only have a
    # few (fs.pipe-user-pages-soft): then keep the default 64 KiB, no error.
    pipe.size = 65536
    if e.pipe_size > 65536:
        if fcntl(pipe.wfd, F_SETPIPE_SZ, <int>e.pipe_size) >= 0:
            pipe.size = e.pipe_size
        elif errno == EPERM:
            e.pipe_size = 65536
    return pipe


cdef void _pipe_put(Engine e, Pipe* pipe) noexcept nogil:
    if e.pool_len < PIPE_POOL_MAX:
        e.pool[e.pool_len] = pipe
        e.pool_len += 1
    else:
        close(pipe.rfd)
        close(pipe.wfd)
        free(pipe)


# -- moving bytes -------------------------------------------------------------

cdef enum:
    PUMP_WAIT = 0     # blocked on EAGAIN; epoll will call again
    PUMP_DONE = 1     # this direction has ended (EOF relayed)
    PUMP_SRC_ERR = 2  # reading the source failed
    PUMP_DST_ERR = 3  # writing the destination failed
    PUMP_NOMEM = 4
    PUMP_THROTTLED = 5  # over its rate: d.wake_us says when to try again


cdef Py_ssize_t _allowance(Dir* d, Py_ssize_t want) noexcept nogil:
    """How much ``d`` may read now (0: throttled, ``d.wake_us`` set)."""
    cdef int64_t now = _now_us()
    cdef int64_t wait_us = 0, w
    cdef Bucket* b
    cdef int i
    for i in range(2):
        b = d.buckets[i]
        if b == NULL:
            break
        b.tokens += (now - b.stamp_us) * b.rate
        if b.tokens > b.burst:
            b.tokens = b.burst
        b.stamp_us = now
        if b.tokens < b.wake:
            w = <int64_t>((b.wake - b.tokens) / b.rate) + 1
            if w > wait_us:
                wait_us = w
        elif b.tokens < want:
            want = <Py_ssize_t>b.tokens
    if wait_us > 0:
        d.wake_us = now + wait_us
        return 0
    return want


cdef inline void _charge(Dir* d, Py_ssize_t n) noexcept nogil:
    d.buckets[0].tokens -= n
    if d.buckets[1] != NULL:
        d.buckets[1].tokens -= n


cdef bint _hold(Dir* d, const char* data, Py_ssize_t n) noexcept nogil:
    """Keep the ``n`` bytes a short write left over, sent first by ``_pump``."""
    d.pend = <char*>malloc(n)
    if d.pend == NULL:
        return False
    memcpy(d.pend, data, n)
    d.pend_len = n
    d.pend_off = 0
    return True


cdef inline bint _copy_suits(Engine e, Dir* d) noexcept nogil:
    """Whether a direction going bulk copies (True) or splices (``Engine.bulk``)."""
    cdef int mode = fastsocks_ref_add(&e.bulk_mode, 0)
    if mode != BULK_AUTO:
        return mode == BULK_COPY
    return fastsocks_mss(d.src) >= COPY_MSS and fastsocks_mss(d.dst) >= COPY_MSS


cdef void _sent_pend(Engine e, Dir* d) noexcept nogil:
    """A direction's held bytes are all sent: a bulk buffer becomes the
    engine's read buffer again where it has none, else it is freed."""
    if d.pend_big:
        fastsocks_ref_add(&bulk_held, -1)
        d.pend_big = False
        if e.scratch == NULL:
            e.scratch = d.pend
            d.pend = NULL
    free(d.pend)
    d.pend = NULL
    d.pend_len = 0
    d.pend_off = 0


cdef int _pump(Engine e, Dir* d, Dir* other) noexcept nogil:
    """Move what can be moved now in one direction (``other``: the opposite one)."""
    cdef ssize_t n, m
    cdef Py_ssize_t want, cap
    cdef char buf[SMALL_READ]
    cdef char* into
    if d.shut:
        return PUMP_DONE
    while True:
        # Bytes handed over with the pair, or held back by a short write, go first.
        while d.pend_off < d.pend_len:
            n = send(d.dst, d.pend + d.pend_off, d.pend_len - d.pend_off, MSG_NOSIGNAL)
            if n < 0:
                if errno == EINTR:
                    continue
                return PUMP_WAIT if errno == EAGAIN else PUMP_DST_ERR
            d.pend_off += n
        if d.pend != NULL:
            _sent_pend(e, d)
        # Drain the pipe into the destination.
        while d.in_pipe > 0:
            n = splice(d.pipe.rfd, NULL, d.dst, NULL, d.in_pipe, SPLICE_F_MOVE | SPLICE_F_NONBLOCK)
            if n < 0:
                if errno == EINTR:
                    continue
                return PUMP_WAIT if errno == EAGAIN else PUMP_DST_ERR
            d.in_pipe -= n
        if d.pipe != NULL:
            _pipe_put(e, d.pipe)
            d.pipe = NULL
        if d.eof:
            # The last direction to end leaves the FIN to the close.
            if not other.shut:
                shutdown(d.dst, SHUT_WR)
            d.shut = True
            return PUMP_DONE
        if not d.ready:
            return PUMP_WAIT
        # Over its rate: wait for the bucket, not for epoll.
        want = BULK_READ
        if d.buckets[0] != NULL:
            want = _allowance(d, want)
            if want == 0:
                return PUMP_THROTTLED
        # Splice mode reads into an empty pipe only: a full pipe and an empty
        # socket would both say EAGAIN.
        if d.bulk and not d.copying:
            d.pipe = _pipe_get(e)
        if d.pipe == NULL:
            # Copy mode, bulk copying, or no pipe to be had (the descriptor
            # limit): recv, then send at once; a short write keeps the rest.
            into = buf
            cap = SMALL_READ
            if d.copying and fastsocks_ref_add(&bulk_held, 0) < bulk_held_max:
                if e.scratch == NULL:
                    e.scratch = <char*>malloc(BULK_READ)
                if e.scratch != NULL:
                    into = e.scratch
                    cap = BULK_READ
            if want > cap:
                want = cap
            n = recv(d.src, into, want, 0)
            if n > 0:
                d.nbytes += n
                if d.buckets[0] != NULL:
                    _charge(d, n)
                if n == SMALL_READ and not d.bulk:
                    d.bulk = True
                    d.copying = _copy_suits(e, d)
                    fastsocks_ref_add(&e.switched[d.copying], 1)
                elif n < want and not d.hup:
                    d.ready = False   # drained: more data is a new edge
                m = send(d.dst, into, n, MSG_NOSIGNAL)
                while m < 0 and errno == EINTR:
                    m = send(d.dst, into, n, MSG_NOSIGNAL)
                if m < 0:
                    if errno != EAGAIN:
                        return PUMP_DST_ERR
                    m = 0
                if m < n:
                    if into == e.scratch:
                        # The rest stays where it is: the direction keeps the
                        # buffer until it is sent, the engine reads into another.
                        d.pend = into
                        d.pend_off = m
                        d.pend_len = n
                        d.pend_big = True
                        e.scratch = NULL
                        fastsocks_ref_add(&bulk_held, 1)
                    elif not _hold(d, into + m, n - m):
                        return PUMP_NOMEM
                    return PUMP_WAIT  # the destination is full: its EPOLLOUT resumes
                continue
            if n == 0:
                d.eof = True
                continue
            if errno == EINTR:
                continue
            if errno == EAGAIN:
                d.ready = False
                return PUMP_WAIT
            return PUMP_SRC_ERR
        # A short splice proves nothing (the pipe's slots may have run out
        # before its bytes): splice mode reads on to EAGAIN.
        n = splice(d.src, NULL, d.pipe.wfd, NULL, want if want < d.pipe.size else d.pipe.size,
                   SPLICE_F_MOVE | SPLICE_F_NONBLOCK)
        if n > 0:
            d.in_pipe = n
            d.nbytes += n
            if d.buckets[0] != NULL:
                _charge(d, n)
        elif n == 0:
            d.eof = True
        else:
            if errno == EINTR:
                continue
            _pipe_put(e, d.pipe)
            d.pipe = NULL
            if errno == EAGAIN:
                d.ready = False
                return PUMP_WAIT
            return PUMP_SRC_ERR


cdef inline void _drop_pipe(Dir* d) noexcept nogil:
    # A pipe that may still hold bytes is closed, not pooled.
    if d.pipe != NULL:
        close(d.pipe.rfd)
        close(d.pipe.wfd)
        free(d.pipe)
        d.pipe = NULL


cdef void _finish(Engine e, Pair* p, int reason) noexcept nogil:
    """Close a pair now and report it; it is freed after the current batch."""
    cdef epoll_event dummy
    cdef Done* d = p.report
    if p.dead:
        return
    cdef bint keep = reason == R_CONNECT_FAILED or reason == R_CONNECT_TIMEOUT \
        or reason == R_HANDBACK
    cdef Done* held
    if p.quiet:
        if p.connect_us < 0 or keep:  # no reply went out: the loop words the end
            _tell(e, p, True)
        else:                     # connected and over: one report, the request in it
            held = p.asked
            p.asked = NULL
            p.quiet = False
            d.whole = True
            d.quiet = True
            d.data = held.data
            d.dlen = held.dlen
            d.dial_us = p.added_us - p.born_us
            free(held)
    p.dead = True
    p.reason = reason
    if p.tlisted:
        _untrottle(e, p)
    # A descriptor nobody duplicated leaves epoll with its close; one that
    # stays open (the client's, handed back) or has a duplicate is removed.
    if keep or not p.sole:
        epoll_ctl(e.epfd, EPOLL_CTL_DEL, p.fds[0], &dummy)
    if not p.sole and p.fds[1] >= 0:
        epoll_ctl(e.epfd, EPOLL_CTL_DEL, p.fds[1], &dummy)
    if not keep:
        close(p.fds[0])       # else the client's fd goes back to the caller, open
    if p.fds[1] >= 0:
        close(p.fds[1])
    _drop_pipe(&p.up)
    _drop_pipe(&p.down)
    # Move it from the live list to the zombies.
    if p.prev != NULL:
        p.prev.next = p.next
    else:
        e.pairs = p.next
    if p.next != NULL:
        p.next.prev = p.prev
    p.prev = NULL
    p.next = e.zombies
    e.zombies = p
    # The report came with the pair (add()): nothing here allocates, so
    # nothing here can lose it.
    p.report = NULL
    d.id = p.id
    d.up = p.up.nbytes
    d.down = p.down.nbytes
    d.reason = reason
    d.err = p.err
    d.connect_us = p.connect_us
    d.answered = p.answered
    if reason == R_HANDBACK:      # what was read goes back with the descriptor
        d.data = _handed(p, p.nlen)
        d.dlen = p.nlen
    _introduce(p, d)
    _report(e, d)


cdef inline void _introduce(Pair* p, Done* d) noexcept nogil:
    """An accepted pair's first report says who it is (Engine._introduce)."""
    if not p.accepted or p.told:
        return
    p.told = True
    d.first = True
    d.fd = p.fds[0]
    d.key = p.key
    d.born_us = p.born_us
    d.pair = <uintptr_t>p
    memcpy(d.peer, p.peer, p.peer_len)
    d.peer_len = p.peer_len


cdef void _report(Engine e, Done* d) noexcept nogil:
    pthread_mutex_lock(&e.lock)
    d.next = e.done
    e.done = d
    pthread_mutex_unlock(&e.lock)
    e.reported = True             # one wake-up for the loop per batch (_engine_loop)


# -- negotiated pairs -----------------------------------------------------------

cdef void _negotiate(Engine e, Pair* p, uint32_t events) noexcept nogil:
    """An epoll event on a negotiated pair's client before dial()."""
    cdef ssize_t n
    cdef Py_ssize_t want
    if p.neg == NEG_WAITING:
        _client_event(e, p, events, p.trail)
        return
    if not events & (EPOLLIN | EPOLLRDHUP | EPOLLERR | EPOLLHUP):
        return
    while p.nlen < NEG_BUF:
        want = NEG_BUF - p.nlen
        n = recv(p.fds[0], p.nbuf + p.nlen, want, 0)
        if n > 0:
            p.nlen += n
            if _parse(e, p):
                return
            if n < want and not events & (EPOLLRDHUP | EPOLLERR | EPOLLHUP):
                return        # the queue was empty: what comes later is a new edge
            continue
        if n == 0:
            _finish(e, p, R_CLIENT_CLOSED)
            return
        if errno == EINTR:
            continue
        if errno != EAGAIN:
            _finish(e, p, R_CLIENT_RESET)
        return
    _finish(e, p, R_HANDBACK)     # never with SOCKS5's sizes: the loop words it


cdef bint _parse(Engine e, Pair* p) noexcept nogil:
    """What the bytes read so far make up; True when the pair left the handshake's reading.

    Only the common case is finished here: a greeting that offers the method
    the server would choose (X'00', or X'02' with a login the set vouches
    for), and a well-formed CONNECT.  Everything else goes back to the loop,
    whose codec words every reply code as ever.
    """
    cdef const unsigned char* b = <const unsigned char*>p.nbuf
    cdef Py_ssize_t g, r, need, alen
    cdef int atyp
    cdef unsigned char named[16]
    cdef bint v6 = False
    if b[0] != 5:
        _finish(e, p, R_HANDBACK)             # SOCKS4, HTTP, or garbage
        return True
    if p.nlen < 2:
        return False
    g = 2 + b[1]
    if p.nlen < g:
        return False
    if p.neg == NEG_GREETING:
        if p.greet == GREET_LOGIN and b[1] and memchr(b + 2, 2, b[1]) != NULL \
                and _now_us() >= e.login_wait_us:
            if not _answer(e, p, b"\x05\x02", SENT_METHOD):
                return True
            p.neg = NEG_LOGIN
        elif p.greet == GREET_OPEN and b[1] and memchr(b + 2, 0, b[1]) != NULL:
            if not _answer(e, p, b"\x05\x00", SENT_OPEN):
                return True
            p.req = g
            p.neg = NEG_REQUEST
        else:
            _finish(e, p, R_HANDBACK)         # another method, none, or a source backing off
            return True
    if p.neg == NEG_LOGIN and not _login(e, p, g):
        return p.dead                         # handed back, or not all in yet
    r = p.req
    if p.nlen < r + 4:
        return False
    if b[r] != 5 or b[r + 1] != 1 or b[r + 2] != 0:
        _finish(e, p, R_HANDBACK)             # BIND, UDP ASSOCIATE, or malformed
        return True
    atyp = b[r + 3]
    if atyp == 1:
        alen = 4
    elif atyp == 4:
        alen = 16
    elif atyp == 3:
        if p.nlen < r + 5:
            return False
        if b[r + 4] == 0:
            _finish(e, p, R_HANDBACK)
            return True
        alen = 1 + b[r + 4]
    else:
        _finish(e, p, R_HANDBACK)
        return True
    need = r + 4 + alen + 2
    if p.nlen < need:
        return False
    # The request is in.  Whatever else the client sent may still be queued
    # (this read stopped): the relay reads on.
    p.up.ready = True
    if p.dial_ms:
        if atyp != 3:
            if _dial(e, p, b + r + 4, atyp == 4, need, False):
                return True
        elif _named(e, b + r + 5, alen - 1, named, &v6) and _dial(e, p, named, v6, need, True):
            return True
    # The loop decides.
    p.trail = p.nlen > need
    p.neg = NEG_WAITING
    _ask(e, p, R_REQUEST, p.nlen)
    return True


cdef bint _answer(Engine e, Pair* p, const char* reply, int sent) noexcept nogil:
    """Send a two-byte answer of the negotiation; False when the client is gone (finished)."""
    if send(p.fds[0], reply, 2, MSG_NOSIGNAL) != 2:
        _finish(e, p, R_CLIENT_RESET)
        return False
    p.answered = sent
    return True


cdef bint _login(Engine e, Pair* p, Py_ssize_t g) noexcept nogil:
    """The RFC 1929 login after X'05 02' (at ``g``): True when the set vouched for it.

    VER X'01', ULEN, UNAME, PLEN, PASSWD.  A login the set knows is answered
    X'01 00' and the request follows; any other (unknown, wrong, malformed,
    or while a source backs off after its failures) goes to the loop, which
    checks it in full and words the failure.  False also while it is not all in.
    """
    cdef const unsigned char* b = <const unsigned char*>p.nbuf
    cdef unsigned char mac[32]
    cdef unsigned char key[32]
    cdef Py_ssize_t ulen, plen
    cdef bint known
    if p.nlen < g + 2:
        return False
    if b[g] != 1:
        _finish(e, p, R_HANDBACK)
        return False
    ulen = b[g + 1]
    if p.nlen < g + 3 + ulen:
        return False
    plen = b[g + 2 + ulen]
    if p.nlen < g + 3 + ulen + plen:
        return False
    known = False
    if ulen and plen:
        # The MAC is made outside the lock, which the loop takes for every
        # command: only the key is copied under it.  A set made anew meanwhile
        # (another key) just does not know it: the loop checks it then.
        pthread_mutex_lock(&e.lock)
        known = e.login_set.used and _now_us() >= e.login_wait_us
        if known:
            memcpy(key, e.login_key, 32)
        pthread_mutex_unlock(&e.lock)
        if known:
            fastsocks_login_mac(key, b + g + 2, ulen, b + g + 3 + ulen, plen, mac)
            pthread_mutex_lock(&e.lock)
            known = fastsocks_logins_has(&e.login_set, mac)
            pthread_mutex_unlock(&e.lock)
    if not known:
        _finish(e, p, R_HANDBACK)
        return False
    if not _answer(e, p, b"\x01\x00", SENT_LOGIN):
        return False
    p.req = g + 3 + ulen + plen
    p.neg = NEG_REQUEST
    return True


cdef void _ask(Engine e, Pair* p, int reason, Py_ssize_t n, bint hold=False) noexcept nogil:
    """Report the request (its first ``n`` bytes read, the greeting first) to the loop.

    With ``hold`` the report is written and kept back: the pair is quiet
    (dialled here, not yet introduced) until ``_tell`` or its end.
    """
    cdef Done* d = p.asked
    d.id = p.id
    d.reason = reason
    d.answered = p.answered
    d.data = _handed(p, n)
    d.dlen = n
    if hold:
        d.quiet = True
        p.quiet = True
        fastsocks_ref_add(&e.quiet, 1)
        return
    p.asked = NULL
    _introduce(p, d)
    _report(e, d)


cdef char* _handed(Pair* p, Py_ssize_t n) noexcept nogil:
    """The handshake's buffer, given up by the pair and cut to its first ``n`` bytes.

    It was NEG_BUF bytes for any handshake; a report may wait up to a scan
    for the loop, and a burst of connections would otherwise leave that
    much per connection in the engine thread's heap, which malloc does not
    give back.  A failed realloc keeps the whole buffer.
    """
    cdef char* b = p.nbuf
    cdef char* cut
    p.nbuf = NULL
    if b != NULL and n < NEG_BUF:
        cut = <char*>realloc(b, n if n > 0 else 1)
        if cut != NULL:
            b = cut
    return b


cdef void _tell(Engine e, Pair* p, bint wake) noexcept nogil:
    """A quiet pair's held-back "dialling" report goes out: the loop hears of it.

    At a scan (``wake`` False) it waits for the next wake-up, as a
    "connected" report does (``_hello``), and comes before that report.
    """
    cdef Done* d = p.asked
    p.asked = NULL
    p.quiet = False
    _introduce(p, d)
    if wake:
        _report(e, d)
    else:
        _report_later(e, d)


cdef inline uint32_t _name_hash(const unsigned char* s, Py_ssize_t n) noexcept nogil:
    cdef uint32_t h = 2166136261U         # FNV-1a
    cdef Py_ssize_t i
    for i in range(n):
        h = (h ^ s[i]) * 16777619U
    return h


cdef bint _named(Engine e, const unsigned char* s, Py_ssize_t n, unsigned char* addr,
                 bint* v6) noexcept nogil:
    """The address ``remember`` keeps for the name ``s`` (into ``addr``); False: none now."""
    cdef uint32_t h = _name_hash(s, n)
    cdef int64_t now = _now_ms()
    cdef Name* slot
    cdef int i
    cdef bint found = False
    pthread_mutex_lock(&e.lock)
    if e.names != NULL:
        for i in range(NAME_PROBE):
            slot = &e.names[(h + <uint32_t>i) & (NAME_SLOTS - 1)]
            if slot.until_ms > now and slot.hash == h and slot.len == n \
                    and memcmp(slot.name, s, n) == 0:
                memcpy(addr, slot.addr, 16 if slot.v6 else 4)
                v6[0] = slot.v6
                found = True
                break
    pthread_mutex_unlock(&e.lock)
    return found


cdef bint _dial(Engine e, Pair* p, const unsigned char* addr, bint v6, Py_ssize_t need,
                bint named) noexcept nogil:
    """Dial ``addr`` (the request's IP literal, or the address ``remember``
    keeps for its name) here and go on as a pair added connecting.

    False (nothing done) for an IPv4-mapped IPv6 address, whose family the
    loop decides, and for a connect that fails at once: the loop tries it and
    words the refusal.  For a name, the report carries the address dialled
    after the request: ATYP X'01' or X'04' and the address.
    """
    cdef const unsigned char* port = <const unsigned char*>p.nbuf + need - 2
    cdef Py_ssize_t alen = 16 if v6 else 4
    cdef Py_ssize_t told = need
    cdef Py_ssize_t reply_len = 0
    cdef char* reply
    cdef int fd, i
    cdef epoll_event ev
    if v6:
        for i in range(10):
            if addr[i] != 0:
                break
        else:
            if addr[10] == 0xff and addr[11] == 0xff:
                return False
    reply = <char*>malloc(22)
    if reply == NULL:
        return False
    if p.nlen > need:         # early bytes for the target, sent first
        p.up.pend = <char*>malloc(p.nlen - need)
        if p.up.pend == NULL:
            free(reply)
            return False
        memcpy(p.up.pend, p.nbuf + need, p.nlen - need)
        p.up.pend_len = p.nlen - need
        p.up.nbytes = p.up.pend_len
    fd = fastsocks_dial(v6, addr, port, reply, &reply_len)
    if fd < 0:
        free(reply)
        free(p.up.pend)
        p.up.pend = NULL
        p.up.pend_len = 0
        p.up.nbytes = 0
        return False
    if named:                 # the early bytes are copied: the address goes in their place
        p.nbuf[need] = 4 if v6 else 1
        memcpy(p.nbuf + need + 1, addr, alen)
        told = need + 1 + alen
        fastsocks_ref_add(&e.name_dials, 1)
    p.fds[1] = fd
    p.up.dst = fd
    p.down.src = fd
    p.down.pend = reply
    p.down.pend_len = reply_len
    p.neg = 0
    p.connecting = True
    p.added_us = _now_us()
    p.deadline_ms = _now_ms() + p.dial_ms
    p.last_ms = _now_ms()
    # Quiet where its listener takes whole reports: introduced at a scan, or
    # reported once at its end.
    _ask(e, p, R_DIALLING, told, p.whole and not p.told)
    ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET
    ev.data.u64 = <uint64_t>p | <uint64_t>1
    if epoll_ctl(e.epfd, EPOLL_CTL_ADD, fd, &ev) < 0:
        _finish(e, p, R_ERROR)
    return True


cdef void _attach(Engine e, Pair* p, Attach* a) noexcept nogil:
    """dial(): the waiting pair gets its upstream and goes on as add() would have."""
    cdef epoll_event ev
    cdef int i
    p.fds[1] = a.fd
    a.fd = -1
    p.up.dst = p.fds[1]
    p.down.src = p.fds[1]
    p.up.pend = a.to_up
    p.up.pend_len = a.up_len
    p.up.nbytes = a.up_len
    a.to_up = NULL
    p.down.pend = a.to_client
    p.down.pend_len = a.client_len
    a.to_client = NULL
    p.idle_ms = a.idle_ms
    for i in range(2):
        if a.shared[i] != NULL:
            p.shared[i] = a.shared[i]
            p.up.buckets[i] = &a.shared[i].up
            p.down.buckets[i] = &a.shared[i].down
            a.shared[i] = NULL
    p.neg = 0
    if a.connect_timeout > 0:
        p.hello = a.hello
        a.hello = NULL
        p.connecting = True
        p.added_us = _now_us()
        p.deadline_ms = _now_ms() + <int64_t>(a.connect_timeout * 1000)
    _free_attach(a)
    p.last_ms = _now_ms()
    ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET
    ev.data.u64 = <uint64_t>p | <uint64_t>1
    if epoll_ctl(e.epfd, EPOLL_CTL_ADD, p.fds[1], &ev) < 0:
        _finish(e, p, R_ERROR)
        return
    if p.connecting:
        return                # the upstream's EPOLLOUT (or error) comes when it is done
    _service(e, p, 0, EPOLLOUT)
    _service(e, p, 1, EPOLLOUT)


cdef void _end_pair(Engine e, Pair* p, const char* data, Py_ssize_t n) noexcept nogil:
    """end(): the last bytes (a refusal), unread input dropped, then the close."""
    cdef char buf[4096]
    cdef int i
    if n > 0:
        send(p.fds[0], data, n, MSG_NOSIGNAL)   # into an empty buffer: best effort
    for i in range(16):       # bounded: a client that keeps sending gets its RST
        if recv(p.fds[0], buf, sizeof(buf), MSG_DONTWAIT) <= 0:
            break
    _finish(e, p, R_CLOSED)


cdef void _untrottle(Engine e, Pair* p) noexcept nogil:
    cdef Pair** link = &e.throttled
    while link[0] != NULL and link[0] != p:
        link = &link[0].tnext
    if link[0] == p:
        link[0] = p.tnext
    p.tnext = NULL
    p.tlisted = False


cdef int64_t _wake_throttled(Engine e) noexcept nogil:
    """Pump the directions whose rate allows reading again; the next wake-up (µs)."""
    cdef int64_t now = _now_us()
    cdef int64_t next_us = 0
    cdef Pair* p = e.throttled
    cdef Pair* nxt
    cdef Dir* d
    cdef int which
    # Take the list: pairs still over their rate put themselves back.
    e.throttled = NULL
    while p != NULL:
        nxt = p.tnext
        p.tnext = NULL
        p.tlisted = False
        for which in range(2):
            d = &p.up if which == 0 else &p.down
            if p.dead or not d.throttled:
                continue
            if d.wake_us <= now:
                d.throttled = False
                _service(e, p, which, EPOLLIN)
            elif not p.tlisted:
                p.tlisted = True
                p.tnext = e.throttled
                e.throttled = p
        p = nxt
    p = e.throttled
    while p != NULL:
        for which in range(2):
            d = &p.up if which == 0 else &p.down
            if d.throttled and (next_us == 0 or d.wake_us < next_us):
                next_us = d.wake_us
        p = p.tnext
    return next_us


cdef void _service(Engine e, Pair* p, int which, uint32_t events) noexcept nogil:
    """An epoll event on the client (0) or upstream (1) fd of ``p``."""
    cdef int r
    cdef Dir* reading = &p.up if which == 0 else &p.down
    cdef Dir* writing = &p.down if which == 0 else &p.up
    if p.dead:
        return
    if p.neg:
        _negotiate(e, p, events)
        return
    if p.connecting:
        _connecting(e, p, which, events)
        return
    p.last_ms = _now_ms()
    if events & (EPOLLIN | EPOLLRDHUP | EPOLLERR | EPOLLHUP):
        reading.ready = True
        if events & (EPOLLRDHUP | EPOLLERR | EPOLLHUP):
            reading.hup = True
        r = _pump(e, reading, writing)
        if _settle(e, p, r, which):
            return
    if events & (EPOLLOUT | EPOLLERR | EPOLLHUP):
        r = _pump(e, writing, reading)
        if _settle(e, p, r, 1 - which):
            return
    if p.up.shut and p.down.shut:
        _finish(e, p, R_EOF)


cdef void _connecting(Engine e, Pair* p, int which, uint32_t events) noexcept nogil:
    """An epoll event on a pair whose upstream connect(2) is still in progress."""
    cdef int err = 0
    cdef unsigned int size = sizeof(int)
    if which == 0:
        _client_event(e, p, events, p.up.pend_len > 0)
        return
    if not events & (EPOLLOUT | EPOLLERR | EPOLLHUP):
        return                # data before the connect completed cannot be
    if getsockopt(p.fds[1], SOL_SOCKET, SO_ERROR, &err, &size) < 0:
        err = errno
    if err == 0 and not events & EPOLLOUT:
        return                # not done yet (a HUP without an error reads on)
    if err != 0:
        p.err = err
        _finish(e, p, R_CONNECT_FAILED)
        return
    # Connected: on as a pair handed over connected, the reply first.  Its
    # "connected" report waits for the next scan (_scan_idle): most short
    # connections end before, and their end says it (connect_us >= 0).
    p.connecting = False
    p.connect_us = _now_us() - p.added_us
    _service(e, p, 0, EPOLLOUT)
    _service(e, p, 1, events)


cdef void _client_event(Engine e, Pair* p, uint32_t events, bint early) noexcept nogil:
    """An event on the client of a pair that does not relay yet (connecting, or
    waiting for dial()): remember that it may hold data (the edge is spent now).

    A FIN with nothing sent before it (``early``: bytes for the target, queued
    here or handed over) means it left: end the pair, which closes the
    upstream socket and so aborts a connect.  After early bytes it is a
    half-close (printf ... | nc -N), relayed once connected.
    """
    cdef char c
    cdef ssize_t n
    if events & (EPOLLIN | EPOLLRDHUP | EPOLLERR | EPOLLHUP):
        p.up.ready = True
    if events & (EPOLLRDHUP | EPOLLERR | EPOLLHUP):
        p.up.hup = True
        if early and not events & (EPOLLERR | EPOLLHUP):
            return
        n = recv(p.fds[0], &c, 1, MSG_PEEK | MSG_DONTWAIT)
        if n == 0:
            _finish(e, p, R_CLIENT_CLOSED)
        elif n < 0 and errno != EAGAIN and errno != EINTR:
            _finish(e, p, R_CLIENT_RESET)


cdef void _hello(Engine e, Pair* p) noexcept nogil:
    """Queue the "connected" report of a pair that connected and still relays (a scan
    after its reply went out).

    It wakes the loop with the next finished pairs, or on its own a quarter
    second later: the reply is counted soon, at no extra wake-up under load.
    """
    cdef Done* d = p.hello
    p.hello = NULL
    d.id = p.id
    d.reason = R_CONNECTED
    d.dialled = True
    d.connect_us = p.connect_us
    _report_later(e, d)


cdef void _report_later(Engine e, Done* d) noexcept nogil:
    """Queue a report that is not an end: it goes with the next wake-up, or on its
    own a quarter second later (``hello_ms``)."""
    pthread_mutex_lock(&e.lock)
    d.next = e.done
    e.done = d
    pthread_mutex_unlock(&e.lock)
    if e.hello_ms == 0:
        e.hello_ms = _now_ms()


cdef bint _settle(Engine e, Pair* p, int r, int src_side) noexcept nogil:
    """Act on a pump result; True when the pair was finished."""
    if r == PUMP_SRC_ERR:
        _finish(e, p, R_CLIENT_RESET if src_side == 0 else R_UPSTREAM_RESET)
    elif r == PUMP_DST_ERR:
        _finish(e, p, R_UPSTREAM_RESET if src_side == 0 else R_CLIENT_RESET)
    elif r == PUMP_NOMEM:
        _finish(e, p, R_ERROR)
    elif r == PUMP_THROTTLED:
        (&p.up if src_side == 0 else &p.down).throttled = True
        if not p.tlisted:
            p.tlisted = True
            p.tnext = e.throttled
            e.throttled = p
    return p.dead


cdef void _register(Engine e, Pair* p) noexcept nogil:
    cdef epoll_event ev
    cdef int i
    p.prev = NULL
    p.next = e.pairs
    if e.pairs != NULL:
        e.pairs.prev = p
    e.pairs = p
    p.last_ms = _now_ms()
    for i in range(2):
        if p.fds[i] < 0:
            continue          # a negotiated pair: its upstream comes with dial()
        ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET
        # The low bit of the pointer says which side: Pair is 8-aligned.
        ev.data.u64 = <uint64_t>p | <uint64_t>i
        if epoll_ctl(e.epfd, EPOLL_CTL_ADD, p.fds[i], &ev) < 0:
            _finish(e, p, R_ERROR)
            return
    if p.connecting or p.neg:
        return                # the upstream's EPOLLOUT (or error) comes when it is done
    # Send the handed-over bytes now.  Data that arrived during the hand-over
    # needs no read here: adding an fd that is already readable to epoll
    # reports it in the next batch (edge-triggered or not).
    _service(e, p, 0, EPOLLOUT)
    _service(e, p, 1, EPOLLOUT)


cdef void _commands(Engine e) noexcept nogil:
    cdef uint64_t counter
    cdef Cmd* c
    cdef Cmd* rev = NULL
    cdef Cmd* nxt
    cdef Pair* p
    read(e.cmd_fd, &counter, 8)
    pthread_mutex_lock(&e.lock)
    c = e.cmds
    e.cmds = NULL
    pthread_mutex_unlock(&e.lock)
    while c != NULL:              # oldest first
        nxt = c.next
        c.next = rev
        rev = c
        c = nxt
    while rev != NULL:
        c = rev
        rev = c.next
        if c.kind == CMD_ADD:
            _register(e, c.pair)
        elif c.kind == CMD_CLOSE:
            p = e.pairs
            while p != NULL and p.id != c.id:
                p = p.next
            if p != NULL:
                _finish(e, p, c.reason)
        elif c.kind == CMD_CLOSE_ALL or c.kind == CMD_STOP:
            if c.kind == CMD_STOP:
                while e.listeners != NULL:
                    _unlisten(e, e.listeners.key)
            while e.pairs != NULL:
                _finish(e, e.pairs, c.reason)
            if c.kind == CMD_STOP:
                e.stopping = True
        elif c.kind == CMD_LISTEN:
            _listen(e, c.listener)
            c.listener = NULL
        elif c.kind == CMD_UNLISTEN:
            _unlisten(e, <int>c.id)
        elif c.kind == CMD_DIAL:
            p = c.pair
            if not p.dead and p.neg == NEG_WAITING:
                _attach(e, p, c.attach)
            else:
                _free_attach(c.attach)   # it ended meanwhile: the upstream is closed
            c.attach = NULL
            _release(p)
        elif c.kind == CMD_END:
            p = c.pair
            if not p.dead:
                _end_pair(e, p, c.data, c.dlen)
            _release(p)
        free(c.data)
        free(c)


# -- listeners -------------------------------------------------------------------

cdef void _listen(Engine e, Listener* l) noexcept nogil:
    """CMD_LISTEN: accept on a new listener, or take new settings for a known one."""
    cdef Listener* known = e.listeners
    cdef epoll_event ev
    while known != NULL and known.key != l.key:
        known = known.next
    if known != NULL:
        known.greet = l.greet
        known.dial_ms = l.dial_ms
        known.idle_ms = l.idle_ms
        known.slow_ms = l.slow_ms
        known.whole = l.whole
        if l.fd >= 0:
            close(l.fd)
        free(l)
        return
    if l.fd < 0:
        free(l)
        return
    # Level-triggered: what one event's batch leaves comes in the next.
    ev.events = EPOLLIN
    ev.data.u64 = <uint64_t>l | <uint64_t>2
    if epoll_ctl(e.epfd, EPOLL_CTL_ADD, l.fd, &ev) < 0:
        close(l.fd)
        free(l)
        return
    l.next = e.listeners
    e.listeners = l


cdef void _unlisten(Engine e, int key) noexcept nogil:
    cdef Listener** link = &e.listeners
    cdef Listener* l
    cdef epoll_event ev
    while link[0] != NULL and link[0].key != key:
        link = &link[0].next
    l = link[0]
    if l == NULL:
        return
    link[0] = l.next
    # Out of epoll first: the loop's socket shares this file description, so
    # closing our duplicate alone would leave it registered, naming freed memory.
    epoll_ctl(e.epfd, EPOLL_CTL_DEL, l.fd, &ev)
    close(l.fd)
    free(l)


cdef void _accept(Engine e, Listener* l) noexcept nogil:
    """A listener is readable: take up to a batch of connections, and negotiate each."""
    cdef char peer[28]
    cdef int peer_len = 0
    cdef int fd, i
    cdef epoll_event ev
    for i in range(ACCEPT_BATCH):
        fd = fastsocks_accept(l.fd, peer, &peer_len)
        if fd >= 0:
            _take(e, l, fd, peer, peer_len)
            continue
        if errno == EAGAIN:
            return
        if errno == EINTR or errno == ECONNABORTED or errno == EPROTO or errno == EPERM:
            continue              # that one went before it was accepted
        # No descriptor (or memory) left: pause, and tell the loop once.
        pthread_mutex_lock(&e.lock)
        e.accept_err = errno
        pthread_mutex_unlock(&e.lock)
        e.reported = True
        ev.events = 0
        ev.data.u64 = <uint64_t>l | <uint64_t>2
        epoll_ctl(e.epfd, EPOLL_CTL_MOD, l.fd, &ev)
        l.paused_ms = _now_ms()
        return


cdef inline int _shaking(Engine e) noexcept nogil:
    """Connections accepted here still in their handshake: unseen, less the quiet ones.

    The two counters are read one after the other, so the difference may be
    off by a pair that moved between them meanwhile (or below 0).
    """
    return fastsocks_ref_add(&e.unseen, 0) - fastsocks_ref_add(&e.quiet, 0)


cdef void _take(Engine e, Listener* l, int fd, const char* peer, int peer_len) noexcept nogil:
    """A connection accepted here: a negotiated pair (as negotiate() makes one), and
    whatever the client has sent already read at once."""
    cdef int room = e.handshake_room
    cdef bint over = room >= 0 and _shaking(e) >= room
    cdef Pair* p = _negotiated(fd, l.greet, l.dial_ms, l.idle_ms)
    if p == NULL:
        close(fd)             # unreported: the client sees a close, as at the fd limit
        return
    p.id = e.next_accepted
    e.next_accepted += 1
    p.accepted = True         # the loop's reference comes with its introduction
    p.whole = l.whole
    p.key = l.key
    p.born_us = _now_us()
    p.deadline_ms = _now_ms() + l.slow_ms
    memcpy(p.peer, peer, peer_len)
    p.peer_len = peer_len
    fastsocks_ref_add(&e.unseen, 1)
    _register(e, p)
    if p.dead:
        return
    if over:                  # the quota is full: the loop refuses it, no byte read
        _finish(e, p, R_HANDBACK)
        return
    _negotiate(e, p, EPOLLIN)   # the greeting is usually in already


cdef void _scan_idle(Engine e, int64_t now) noexcept nogil:
    cdef Pair* p = e.pairs
    cdef Pair* nxt
    cdef Listener* l = e.listeners
    cdef epoll_event ev
    while l != NULL:
        if l.paused_ms and now - l.paused_ms >= ACCEPT_PAUSE_MS:
            l.paused_ms = 0
            ev.events = EPOLLIN
            ev.data.u64 = <uint64_t>l | <uint64_t>2
            epoll_ctl(e.epfd, EPOLL_CTL_MOD, l.fd, &ev)
        l = l.next
    while p != NULL:
        nxt = p.next
        if p.quiet:
            _tell(e, p, False)
        if p.accepted and p.neg and p.neg != NEG_WAITING:
            if now >= p.deadline_ms:
                _finish(e, p, R_HANDBACK)   # slow: the loop's limits and timeout take it
        elif p.connecting:
            if now >= p.deadline_ms:
                p.err = ETIMEDOUT
                _finish(e, p, R_CONNECT_TIMEOUT)
        elif p.idle_ms > 0 and now - p.last_ms >= p.idle_ms:
            _finish(e, p, R_IDLE)
        elif p.hello != NULL and p.connect_us >= 0:
            _hello(e, p)
        p = nxt


cdef void _engine_loop(Engine e) noexcept nogil:
    cdef epoll_event events[MAX_EVENTS]
    cdef int n, i
    cdef uint64_t tag
    cdef Pair* p
    cdef int64_t now, last_scan = _now_ms()
    cdef int64_t wake_us = 0, left
    cdef int timeout
    cdef uint64_t one = 1
    while not e.stopping:
        timeout = SCAN_MS
        if wake_us:
            left = (wake_us - _now_us() + 999) // 1000
            timeout = 0 if left < 0 else (<int>left if left < SCAN_MS else SCAN_MS)
        n = epoll_wait(e.epfd, events, MAX_EVENTS, timeout)
        for i in range(n):
            tag = events[i].data.u64
            if tag == 0:
                _commands(e)
            elif tag & 2:
                _accept(e, <Listener*>(tag & ~(<uint64_t>3)))
            else:
                p = <Pair*>(tag & ~(<uint64_t>1))
                _service(e, p, <int>(tag & 1), events[i].events)
        wake_us = _wake_throttled(e) if e.throttled != NULL else 0
        now = _now_ms()
        if now - last_scan >= SCAN_MS:
            last_scan = now
            _scan_idle(e, now)
        if e.reported or (e.hello_ms and now - e.hello_ms >= SCAN_MS):
            e.reported = False
            e.hello_ms = 0
            write(e.done_fd, &one, 8)
        # Nothing in this batch names a zombie any more.
        while e.zombies != NULL:
            p = e.zombies
            e.zombies = p.next
            _drop(p)
