# cython: language_level=3, embedsignature=True
"""The UDP ASSOCIATE datagram path in C (Linux): recvmmsg/sendmmsg batches.

``control.udp.UdpAssociation`` decides (access rules, DNS, FRAG reassembly,
chaining) and ``datagram.NativePath`` hands its sockets' descriptors to an
``Association`` here, whose ``client_readable`` and ``target_readable`` the
event loop calls when a socket has datagrams (``loop.add_reader``).  The
pure-Python twin, for other platforms and protected (GSSAPI) datagrams, is
``_datagram_py``.  Each call takes up to ``BATCH``
datagrams with one recvmmsg(2) and sends what it can with one sendmmsg(2)
per destination socket, without making a Python object per datagram:

* client → target: the source must be the client's IP (and the locked
  port); the RFC 1928 §7 header is parsed here; FRAG 0 and an IP-literal
  target that the table marks ``F_FAST`` go straight out of the outbound
  socket of that family, the payload sent from the receive buffer itself.
  Everything else (domain names, a target not yet judged by the access
  rules, FRAG ≠ 0, ATYP the codec must reject) goes up to Python as bytes,
  once per batch, and Python installs its decision (``install``) so that
  the next datagram to that target stays here.
* target → client: only sources in the table (``F_PEER``: the client sent
  to them) get through; the §7 header is written into the headroom before
  the payload, so the reply goes out of the buffer it arrived in.
* Through an upstream proxy: a target that a rule sends to an upstream
  (``F_CHAIN``) gets the client's datagram as it came, header and all (the
  §7 header is what the upstream's relay expects), on the socket connected
  to that relay; what the relay sends back (already carrying its §7 header)
  goes to the client as it came (``chain_readable``).
* Either way, consecutive datagrams of one batch to one destination, all of
  one size but the last, leave as one UDP GSO message (UDP_SEGMENT): the
  kernel cuts it into the same datagrams, so a stream of equal datagrams
  costs one pass through the socket layer per run instead of per datagram.

Why the event loop thread and not an engine thread of its own: the calls
are non-blocking and take microseconds, so releasing the GIL around them
would cost more than it frees, and keeping the association on the loop
thread means Python's decisions, the idle timer and close need no queue or
lock (an association closed between two batches simply is not called
again).  The receive and send arrays are per module, used only while the
GIL is held and no Python code runs (slow-path datagrams are collected and
handed up after the batch is sent).
"""

from libc.errno cimport errno, EAGAIN, EINTR
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcmp, memcpy, memset
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE


cdef extern from "<sys/uio.h>" nogil:
    struct iovec:
        void* iov_base
        size_t iov_len


cdef extern from "<sys/socket.h>" nogil:
    ctypedef unsigned int socklen_t
    ctypedef unsigned short sa_family_t

    struct sockaddr:
        sa_family_t sa_family

    struct msghdr:
        void* msg_name
        socklen_t msg_namelen
        iovec* msg_iov
        size_t msg_iovlen
        void* msg_control
        size_t msg_controllen
        int msg_flags

    struct mmsghdr:
        msghdr msg_hdr
        unsigned int msg_len

    struct timespec:
        pass

    struct cmsghdr:
        size_t cmsg_len
        int cmsg_level
        int cmsg_type

    cmsghdr* CMSG_FIRSTHDR(msghdr* m)
    unsigned char* CMSG_DATA(cmsghdr* c)
    size_t CMSG_SPACE(size_t n)
    size_t CMSG_LEN(size_t n)

    int recvmmsg(int fd, mmsghdr* vec, unsigned int vlen, int flags, timespec* timeout)
    int sendmmsg(int fd, mmsghdr* vec, unsigned int vlen, int flags)
    enum:
        AF_INET
        AF_INET6
        MSG_DONTWAIT


cdef extern from "<netinet/in.h>" nogil:
    struct in_addr:
        uint32_t s_addr

    struct in6_addr:
        unsigned char s6_addr[16]

    struct sockaddr_in:
        sa_family_t sin_family
        uint16_t sin_port
        in_addr sin_addr

    struct sockaddr_in6:
        sa_family_t sin6_family
        uint16_t sin6_port
        uint32_t sin6_flowinfo
        in6_addr sin6_addr
        uint32_t sin6_scope_id


cdef enum:
    BATCH = 64                # datagrams per recvmmsg/sendmmsg
    ROUNDS = 8                # batches per call, then back to the loop (fairness)
    HEADROOM = 32             # room for the reply header (at most 22 bytes, §7)
    PAYLOAD = 65536           # the largest UDP payload fits
    SLOT = HEADROOM + PAYLOAD
    MAX_TABLE = 4096          # targets remembered per association (_datagram_py.MAX_PEERS)
    ATYP_IPV4 = 1             # RFC 1928 §5
    ATYP_DOMAIN = 3
    ATYP_IPV6 = 4
    # UDP GSO (linux/udp.h; Linux ≥ 4.18): one send, the kernel cuts the segments.
    SOL_UDP = 17
    UDP_SEGMENT = 103
    GSO_MAX_SEGS = 64         # UDP_MAX_SEGMENTS of older kernels
    GSO_MAX_BYTES = 63 * 1024  # a run must fit one IP packet's 64 KiB

# Per-module arrays (see the module docstring for why sharing them is safe).
cdef char* _slots = NULL
cdef mmsghdr _rmsg[BATCH]
cdef iovec _riov[BATCH]
cdef sockaddr_in6 _rname[BATCH]
cdef mmsghdr _smsg[2 * BATCH]      # client → target, by family (0: IPv4, 1: IPv6)
cdef iovec _siov[2 * BATCH]
cdef sockaddr_in6 _sname[2 * BATCH]
cdef mmsghdr _cmsg[BATCH]          # target → client
cdef mmsghdr _xmsg[BATCH]          # client → an upstream's relay (connected: no name)
cdef iovec _xiov[BATCH]
cdef int _xhdr[BATCH]              # the §7 header length of each (not payload)
cdef iovec _ciov[BATCH]
cdef int _chdr[BATCH]              # header length of each
cdef mmsghdr _gmsg[BATCH]          # runs of the above, one GSO message each
cdef iovec _giov[BATCH]
cdef uint64_t _gctl[BATCH * 4]     # a UDP_SEGMENT cmsg per run (32 bytes, aligned)
cdef int _gfirst[BATCH]
cdef int _gcount[BATCH]
cdef int _ghdr[BATCH]
cdef uint8_t _V4_MAPPED[12]


cdef int _setup() except -1:
    """Allocate the module's receive slots (4 MiB of address space) on the
    first association, so that a server without UDP never maps them."""
    global _slots
    cdef int i
    if _slots != NULL:
        return 0
    _slots = <char*>malloc(BATCH * SLOT)
    if _slots == NULL:
        raise MemoryError()
    memset(_V4_MAPPED, 0, 10)
    _V4_MAPPED[10] = 0xFF
    _V4_MAPPED[11] = 0xFF
    memset(_rmsg, 0, sizeof(_rmsg))
    memset(_smsg, 0, sizeof(_smsg))
    memset(_cmsg, 0, sizeof(_cmsg))
    memset(_xmsg, 0, sizeof(_xmsg))
    for i in range(BATCH):
        _riov[i].iov_base = _slots + i * SLOT + HEADROOM
        _riov[i].iov_len = PAYLOAD
        _rmsg[i].msg_hdr.msg_name = &_rname[i]
        _rmsg[i].msg_hdr.msg_iov = &_riov[i]
        _rmsg[i].msg_hdr.msg_iovlen = 1
        _cmsg[i].msg_hdr.msg_iov = &_ciov[i]
        _cmsg[i].msg_hdr.msg_iovlen = 1
        _xmsg[i].msg_hdr.msg_iov = &_xiov[i]
        _xmsg[i].msg_hdr.msg_iovlen = 1
    for i in range(2 * BATCH):
        _smsg[i].msg_hdr.msg_name = &_sname[i]
        _smsg[i].msg_hdr.msg_iov = &_siov[i]
        _smsg[i].msg_hdr.msg_iovlen = 1
    return 0


cdef int _recv_batch(int fd) noexcept:
    """recvmmsg into the module's slots: how many arrived (0 on EAGAIN or error)."""
    cdef int i, n
    for i in range(BATCH):
        _rmsg[i].msg_hdr.msg_namelen = sizeof(sockaddr_in6)
        _rmsg[i].msg_hdr.msg_flags = 0
    for i in range(4):
        n = recvmmsg(fd, _rmsg, BATCH, MSG_DONTWAIT, NULL)
        if n >= 0:
            return n
        if errno != EINTR:
            return 0
    return 0


cdef int _send_all(int fd, mmsghdr* msgs, int n, const int* headers,
                   uint64_t* sent_bytes) noexcept:
    """sendmmsg ``n`` messages; a message the kernel refuses is skipped.

    Returns how many went out; their payload bytes (less ``headers[j]``, the
    §7 header of each, when given) are added to ``sent_bytes``.
    A full send buffer (EAGAIN) drops the rest of the batch: UDP may lose
    datagrams, and waiting here would hold up every other association.
    """
    cdef int off = 0, r, sent = 0, j, tries = 0
    while off < n and tries < 2 * BATCH + 4:
        tries += 1
        r = sendmmsg(fd, msgs + off, n - off, MSG_DONTWAIT)
        if r > 0:
            for j in range(off, off + r):
                sent_bytes[0] += msgs[j].msg_len - (headers[j] if headers != NULL else 0)
            sent += r
            off += r
        elif r < 0 and errno == EINTR:
            continue
        elif r < 0 and errno == EAGAIN:
            break
        else:
            off += 1  # this one was refused (e.g. EMSGSIZE); the rest may go
    return sent


cdef int _send_runs(int fd, mmsghdr* q, int n, const int* headers, uint64_t* sent_bytes,
                    bint* gso) noexcept:
    """``_send_all``, but a run of datagrams to one destination, all of one size
    (the last may be shorter), goes as one UDP GSO message (UDP_SEGMENT): the
    kernel cuts it into the same datagrams after one pass through the socket
    layer and the route lookup, instead of one per datagram.

    A run the kernel refuses (EIO: a device without checksum offload; EINVAL:
    a segment over the MTU) is sent again one datagram at a time, and
    ``gso[0]`` turns False so that the association stops trying.
    """
    cdef int i = 0, j, k, runs = 0, r, off = 0, sent = 0, tries = 0
    cdef size_t size, total, n_j
    cdef msghdr* m
    cdef cmsghdr* c
    cdef uint16_t seg
    if not gso[0] or n < 2:
        return _send_all(fd, q, n, headers, sent_bytes)
    while i < n:
        size = q[i].msg_hdr.msg_iov[0].iov_len
        total = size
        j = i + 1
        while size > 0 and j < n and j - i < GSO_MAX_SEGS:
            n_j = q[j].msg_hdr.msg_iov[0].iov_len
            if n_j == 0 or n_j > size or total + n_j > GSO_MAX_BYTES \
                    or q[j].msg_hdr.msg_namelen != q[i].msg_hdr.msg_namelen \
                    or memcmp(q[j].msg_hdr.msg_name, q[i].msg_hdr.msg_name,
                              q[i].msg_hdr.msg_namelen) != 0:
                break
            total += n_j
            j += 1
            if n_j < size:  # a shorter one can only end a run
                break
        m = &_gmsg[runs].msg_hdr
        m.msg_name = q[i].msg_hdr.msg_name
        m.msg_namelen = q[i].msg_hdr.msg_namelen
        m.msg_iov = &_giov[i]
        m.msg_iovlen = j - i
        m.msg_flags = 0
        _ghdr[runs] = 0
        for k in range(i, j):
            _giov[k] = q[k].msg_hdr.msg_iov[0]
            if headers != NULL:
                _ghdr[runs] += headers[k]
        if j - i > 1:
            m.msg_control = &_gctl[runs * 4]
            m.msg_controllen = CMSG_SPACE(sizeof(uint16_t))
            c = CMSG_FIRSTHDR(m)
            c.cmsg_level = SOL_UDP
            c.cmsg_type = UDP_SEGMENT
            c.cmsg_len = CMSG_LEN(sizeof(uint16_t))
            seg = <uint16_t>size
            memcpy(CMSG_DATA(c), &seg, sizeof(uint16_t))
        else:
            m.msg_control = NULL
            m.msg_controllen = 0
        _gfirst[runs] = i
        _gcount[runs] = j - i
        runs += 1
        i = j
    while off < runs and tries < 2 * BATCH + 4:
        tries += 1
        r = sendmmsg(fd, &_gmsg[off], runs - off, MSG_DONTWAIT)
        if r > 0:
            for k in range(off, off + r):
                sent += _gcount[k]
                sent_bytes[0] += _gmsg[k].msg_len - _ghdr[k]
            off += r
        elif r < 0 and errno == EINTR:
            continue
        elif r < 0 and errno == EAGAIN:
            break
        else:
            if _gcount[off] > 1:
                gso[0] = False
                sent += _send_all(fd, &q[_gfirst[off]], _gcount[off],
                                  headers + _gfirst[off] if headers != NULL else NULL,
                                  sent_bytes)
            off += 1
    return sent


cdef inline uint32_t _hash(uint8_t family, const uint8_t* addr, uint16_t port) noexcept:
    # FNV-1a over the key: targets are few, the table is small.
    cdef uint32_t h = 2166136261u
    cdef int i
    for i in range(16):
        h = (h ^ addr[i]) * 16777619u
    h = (h ^ (port & 0xFF)) * 16777619u
    h = (h ^ (port >> 8)) * 16777619u
    h = (h ^ family) * 16777619u
    return h


cdef inline int _client_side_key(const sockaddr_in6* name, uint8_t* ip16, uint16_t* port) noexcept:
    """The sender of a datagram on the client socket, IPv4 as ::ffff:a.b.c.d."""
    if name.sin6_family == AF_INET6:
        memcpy(ip16, name.sin6_addr.s6_addr, 16)
        port[0] = name.sin6_port
        return 0
    if name.sin6_family == AF_INET:
        memcpy(ip16, _V4_MAPPED, 12)
        memcpy(ip16 + 12, &(<const sockaddr_in*>name).sin_addr.s_addr, 4)
        port[0] = (<const sockaddr_in*>name).sin_port
        return 0
    return -1


# What ``_parse`` found.
cdef enum:
    P_DROP = -1               # not a §7 header: the codec would refuse it too
    P_SLOW = 0                # for Python: FRAG ≠ 0, a domain name, an ATYP to refuse


cdef inline int _parse(const uint8_t* data, Py_ssize_t n, uint8_t* family, uint8_t* addr,
                       uint16_t* port) noexcept:
    """RFC 1928 §7: +----+------+------+----------+----------+----------+
                      |RSV | FRAG | ATYP | DST.ADDR | DST.PORT |   DATA   |
                      | 2  |  1   |  1   | Variable |    2     | Variable |

    Returns the header length for FRAG 0 and an IPv4/IPv6 target (key in
    family/addr/port, port in network order), else P_DROP or P_SLOW.  The
    rules are codec.parse_udp_header's: RSV must be zero, the address must fit.
    """
    if n < 4 or data[0] != 0 or data[1] != 0:
        return P_DROP
    if data[2] != 0:
        return P_SLOW
    if data[3] == ATYP_IPV4:
        if n < 10:
            return P_DROP
        family[0] = 4
        memcpy(addr, data + 4, 4)
        memset(addr + 4, 0, 12)
        memcpy(port, data + 8, 2)
        return 10
    if data[3] == ATYP_IPV6:
        if n < 22:
            return P_DROP
        family[0] = 6
        memcpy(addr, data + 4, 16)
        memcpy(port, data + 20, 2)
        return 22
    return P_SLOW


cdef inline int _reply_header(const uint8_t* data, Py_ssize_t n) noexcept:
    """The length of the §7 header an upstream's relay put on a reply, or -1
    (RSV must be zero, FRAG 0: fragments are not reassembled from it)."""
    if n < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0:
        return -1
    if data[3] == ATYP_IPV4:
        return 10 if n >= 10 else -1
    if data[3] == ATYP_IPV6:
        return 22 if n >= 22 else -1
    if data[3] == ATYP_DOMAIN and n >= 5 and 7 + data[4] <= n:
        return 7 + data[4]
    return -1


# The table's flags (_datagram.pxd), for the Python that installs decisions.
PEER = F_PEER
FAST = F_FAST
DENY = F_DENY
CHAIN = F_CHAIN


def classify(bytes data):
    """What the C path does with ``data`` from the client (for tests):
    ``"drop"``, ``"python"``, or ``(family, packed address, port, header length)``."""
    cdef uint8_t family = 0
    cdef uint8_t addr[16]
    cdef uint16_t port = 0
    cdef int r = _parse(<const uint8_t*>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data),
                        &family, addr, &port)
    if r == P_DROP:
        return "drop"
    if r == P_SLOW:
        return "python"
    return (family, (<char*>addr)[:4 if family == 4 else 16],
            ((<uint8_t*>&port)[0] << 8) | (<uint8_t*>&port)[1], r)


cdef class Association:
    """The C side of one UDP association.  Call from the event loop thread only.

    ``client_fd``: the client-facing socket; ``client_ip``: the TCP client's
    address, 16 bytes (IPv4 as ::ffff:a.b.c.d); ``client_port``: DST.PORT of
    the request, 0 to lock on the first datagram; ``slow(list_of_bytes)``:
    receives the datagrams (header included) that Python must handle.  The
    descriptors stay owned by the caller, who closes them after ``close()``.
    """

    def __cinit__(self):
        self.client_fd = -1
        self.out_fd[0] = -1
        self.out_fd[1] = -1
        self.table = NULL
        self.closed = False
        self.gso = True

    def __init__(self, int client_fd, bytes client_ip, int client_port, slow):
        if PyBytes_GET_SIZE(client_ip) != 16:
            raise ValueError("client_ip must be 16 bytes (IPv4 as ::ffff:a.b.c.d)")
        if not 0 <= client_port <= 0xFFFF:
            raise ValueError("client_port out of range")
        _setup()
        self.client_fd = client_fd
        memcpy(self.client_ip, PyBytes_AS_STRING(client_ip), 16)
        (<uint8_t*>&self.locked_port)[0] = client_port >> 8
        (<uint8_t*>&self.locked_port)[1] = client_port & 0xFF
        self.client_namelen = 0
        self.slow = slow
        self.cap = 16
        self.count = 0
        self.max_entries = MAX_TABLE
        self.table = <Entry*>calloc(self.cap, sizeof(Entry))
        if self.table == NULL:
            raise MemoryError()

    def __dealloc__(self):
        free(self.table)

    @property
    def client_port(self):
        """The port client datagrams must come from (0: not locked yet)."""
        return ((<uint8_t*>&self.locked_port)[0] << 8) | (<uint8_t*>&self.locked_port)[1]

    @property
    def targets(self):
        """How many targets the table holds."""
        return self.count

    def set_outbound(self, bint ipv6, int fd):
        """The outbound socket of one family, opened by Python."""
        self.out_fd[1 if ipv6 else 0] = fd

    def install(self, bytes packed, int port, int flags, int chain_fd=-1):
        """Remember Python's decision for a target (``F_PEER``/``F_FAST``/``F_DENY``/
        ``F_CHAIN``, OR-ed into what is there; ``chain_fd`` with ``F_CHAIN``).
        False when the table is full: that target then stays with Python, and
        cannot answer (as _datagram_py.MAX_PEERS)."""
        cdef uint8_t addr[16]
        cdef uint8_t family
        cdef uint16_t nport
        cdef Py_ssize_t n = PyBytes_GET_SIZE(packed)
        cdef Entry* e
        if n == 4:
            family = 4
            memset(addr, 0, 16)
        elif n == 16:
            family = 6
        else:
            raise ValueError("packed must be an IPv4 (4 bytes) or IPv6 (16 bytes) address")
        if not 0 <= port <= 0xFFFF:
            raise ValueError("port out of range")
        if flags & F_CHAIN and chain_fd < 0:
            raise ValueError("F_CHAIN needs the upstream's socket")
        memcpy(addr, PyBytes_AS_STRING(packed), n)
        (<uint8_t*>&nport)[0] = port >> 8
        (<uint8_t*>&nport)[1] = port & 0xFF
        e = self._find(family, addr, nport)
        if e.family == 0:
            if self.count >= self.max_entries:
                return False
            if (self.count + 1) * 2 > self.cap:
                self._grow()
                e = self._find(family, addr, nport)
            e.family = family
            memcpy(e.addr, addr, 16)
            e.port = nport
            self.count += 1
        e.flags |= flags
        if flags & F_CHAIN:
            e.chain_fd = chain_fd
        return True

    def unchain(self, int chain_fd):
        """Forget every target sent to ``chain_fd`` (the caller closes it next)."""
        cdef Py_ssize_t i
        for i in range(self.cap):
            if self.table[i].family != 0 and self.table[i].flags & F_CHAIN \
                    and self.table[i].chain_fd == chain_fd:
                self.table[i].flags &= ~F_CHAIN
                self.table[i].chain_fd = -1

    def close(self):
        """No more calls after this; the caller removes the readers and closes the fds."""
        self.closed = True
        self.client_fd = -1
        self.out_fd[0] = -1
        self.out_fd[1] = -1
        self.slow = None

    cdef Entry* _find(self, uint8_t family, const uint8_t* addr, uint16_t port) noexcept:
        """The entry for the key, or the empty slot where it would go."""
        cdef Py_ssize_t mask = self.cap - 1
        cdef Py_ssize_t i = _hash(family, addr, port) & mask
        cdef Entry* e
        while True:  # the table is never more than half full: this ends
            e = &self.table[i]
            if e.family == 0 or (e.family == family and e.port == port
                                 and memcmp(e.addr, addr, 16) == 0):
                return e
            i = (i + 1) & mask

    cdef int _grow(self) except -1:
        cdef Entry* old = self.table
        cdef Py_ssize_t old_cap = self.cap, i
        cdef Entry* e
        self.table = <Entry*>calloc(old_cap * 2, sizeof(Entry))
        if self.table == NULL:
            self.table = old
            raise MemoryError()
        self.cap = old_cap * 2
        for i in range(old_cap):
            if old[i].family != 0:
                e = self._find(old[i].family, old[i].addr, old[i].port)
                e[0] = old[i]
        free(old)
        return 0

    def client_readable(self):
        """The client socket has datagrams (the event loop calls this)."""
        cdef int n, i, rounds, fam, pos, chained, chain_fd = -1
        cdef int counts[2]
        cdef const uint8_t* data
        cdef Py_ssize_t length
        cdef uint8_t ip16[16]
        cdef uint8_t addr[16]
        cdef uint8_t family = 0
        cdef uint16_t port, tport = 0
        cdef Entry* e
        cdef list slow
        if self.closed:
            return
        # Made before the batch: a new list may start a garbage collection
        # (finalizers: Python code), which must not run while the module's
        # arrays hold a batch.  Appending bytes to it cannot.
        slow = []
        for rounds in range(ROUNDS):
            n = _recv_batch(self.client_fd)
            if n == 0:
                break
            self.batches += 1
            counts[0] = 0
            counts[1] = 0
            chained = 0
            for i in range(n):
                # §7: only the TCP client's address, and its one port.
                if _client_side_key(&_rname[i], ip16, &port) < 0 \
                        or memcmp(ip16, self.client_ip, 16) != 0 \
                        or (self.locked_port != 0 and port != self.locked_port):
                    self.dropped += 1
                    continue
                if self.client_namelen == 0:
                    self.locked_port = port
                    self.client_namelen = _rmsg[i].msg_hdr.msg_namelen
                    memcpy(self.client_name, &_rname[i], self.client_namelen)
                data = <const uint8_t*>_riov[i].iov_base
                length = _rmsg[i].msg_len
                pos = _parse(data, length, &family, addr, &tport)
                if pos == P_DROP:
                    self.dropped += 1
                    continue
                self.activity += 1
                if pos != P_SLOW:
                    e = self._find(family, addr, tport)
                    if e.flags & F_DENY:
                        self.dropped += 1
                        continue
                    if e.flags & F_CHAIN:  # to the upstream's relay, as it came
                        if chained and e.chain_fd != chain_fd:
                            self._flush_chain(chain_fd, chained)
                            chained = 0
                        chain_fd = e.chain_fd
                        _xiov[chained].iov_base = <void*>data
                        _xiov[chained].iov_len = length
                        _xhdr[chained] = pos
                        chained += 1
                        continue
                    fam = 0 if family == 4 else 1
                    if e.flags & F_FAST and self.out_fd[fam] >= 0:
                        self._queue_up(fam, counts, addr, tport, data + pos, length - pos)
                        continue
                slow.append(PyBytes_FromStringAndSize(<const char*>data, length))
            self._flush_up(counts)
            if chained:
                self._flush_chain(chain_fd, chained)
            if n < BATCH:
                break
        if slow and not self.closed:
            # Python's decisions, once per batch, after the batch is sent.
            self.slow(slow)

    cdef void _queue_up(self, int fam, int* counts, const uint8_t* addr, uint16_t port,
                               const uint8_t* payload, Py_ssize_t n) noexcept:
        cdef int k = fam * BATCH + counts[fam]
        cdef sockaddr_in* s4
        cdef sockaddr_in6* s6
        if fam == 0:
            s4 = <sockaddr_in*>&_sname[k]
            memset(s4, 0, sizeof(sockaddr_in))
            s4.sin_family = AF_INET
            s4.sin_port = port
            memcpy(&s4.sin_addr.s_addr, addr, 4)
            _smsg[k].msg_hdr.msg_namelen = sizeof(sockaddr_in)
        else:
            s6 = &_sname[k]
            memset(s6, 0, sizeof(sockaddr_in6))
            s6.sin6_family = AF_INET6
            s6.sin6_port = port
            memcpy(s6.sin6_addr.s6_addr, addr, 16)
            _smsg[k].msg_hdr.msg_namelen = sizeof(sockaddr_in6)
        _siov[k].iov_base = <void*>payload
        _siov[k].iov_len = n
        counts[fam] += 1

    cdef void _flush_up(self, int* counts) noexcept:
        cdef int fam, sent
        for fam in range(2):
            if counts[fam]:
                sent = _send_runs(self.out_fd[fam], &_smsg[fam * BATCH], counts[fam], NULL,
                                  &self.bytes_up, &self.gso)
                self.datagrams_up += sent
                self.dropped += counts[fam] - sent
                counts[fam] = 0

    def target_readable(self, bint ipv6):
        """The outbound socket of one family has datagrams (the event loop calls this)."""
        cdef int fd, n, i, rounds, queued, hlen
        cdef uint8_t family = 6 if ipv6 else 4
        cdef uint8_t addr[16]
        cdef uint16_t port
        cdef uint8_t* payload
        cdef uint8_t* header
        cdef bint mapped
        cdef Entry* e
        cdef sockaddr_in* s4
        if self.closed:
            return
        fd = self.out_fd[1 if ipv6 else 0]
        for rounds in range(ROUNDS):
            n = _recv_batch(fd)
            if n == 0:
                break
            self.batches += 1
            queued = 0
            for i in range(n):
                if ipv6:
                    memcpy(addr, _rname[i].sin6_addr.s6_addr, 16)
                    port = _rname[i].sin6_port
                else:
                    s4 = <sockaddr_in*>&_rname[i]
                    memcpy(addr, &s4.sin_addr.s_addr, 4)
                    memset(addr + 4, 0, 12)
                    port = s4.sin_port
                e = self._find(family, addr, port)
                # Address and port restricted: only targets the client sent to.
                if not (e.flags & F_PEER) or self.client_namelen == 0:
                    self.dropped += 1
                    continue
                self.activity += 1
                # §7 header in the headroom: the target's address, IPv4 for
                # an IPv4-mapped one (as _datagram_py's replies).
                payload = <uint8_t*>_riov[i].iov_base
                mapped = ipv6 and memcmp(addr, _V4_MAPPED, 12) == 0
                if ipv6 and not mapped:
                    hlen = 22
                    header = payload - hlen
                    header[3] = ATYP_IPV6
                    memcpy(header + 4, addr, 16)
                    memcpy(header + 20, &port, 2)
                else:
                    hlen = 10
                    header = payload - hlen
                    header[3] = ATYP_IPV4
                    memcpy(header + 4, <uint8_t*>addr + (12 if mapped else 0), 4)
                    memcpy(header + 8, &port, 2)
                header[0] = 0
                header[1] = 0
                header[2] = 0
                self._queue_down(queued, header, hlen + _rmsg[i].msg_len, hlen)
                queued += 1
            self._flush_down(queued)
            if n < BATCH:
                break

    def chain_readable(self, int fd):
        """The socket connected to an upstream's relay has datagrams: they carry
        the relay's §7 header already, and go to the client as they came."""
        cdef int n, i, rounds, queued, hlen
        cdef const uint8_t* data
        if self.closed:
            return
        for rounds in range(ROUNDS):
            n = _recv_batch(fd)
            if n == 0:
                break
            self.batches += 1
            queued = 0
            for i in range(n):
                data = <const uint8_t*>_riov[i].iov_base
                hlen = _reply_header(data, _rmsg[i].msg_len)
                if hlen < 0 or self.client_namelen == 0:
                    self.dropped += 1
                    continue
                self.activity += 1
                self._queue_down(queued, <void*>data, _rmsg[i].msg_len, hlen)
                queued += 1
            self._flush_down(queued)
            if n < BATCH:
                break

    cdef void _queue_down(self, int k, void* start, size_t n, int hlen) noexcept:
        """Reply ``k`` of this batch: ``n`` bytes at ``start``, a §7 header of ``hlen`` first."""
        _ciov[k].iov_base = start
        _ciov[k].iov_len = n
        _chdr[k] = hlen
        _cmsg[k].msg_hdr.msg_name = self.client_name
        _cmsg[k].msg_hdr.msg_namelen = self.client_namelen

    cdef void _flush_chain(self, int fd, int queued) noexcept:
        """Send this batch's datagrams for one upstream (runs as GSO, like the rest)."""
        cdef int sent = _send_runs(fd, _xmsg, queued, _xhdr, &self.bytes_up, &self.gso)
        self.datagrams_up += sent
        self.dropped += queued - sent

    cdef void _flush_down(self, int queued) noexcept:
        cdef int sent
        if queued:
            sent = _send_runs(self.client_fd, _cmsg, queued, _chdr, &self.bytes_down, &self.gso)
            self.datagrams_down += sent
            self.dropped += queued - sent
