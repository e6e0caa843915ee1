# cython: language_level=3

from libc.stdint cimport uint8_t, uint16_t, uint64_t

# Flags of a target in an association's table.
cdef enum:
    F_PEER = 1    # the client sent to it: its datagrams may come back (§7, restricted)
    F_FAST = 2    # an IP literal the access rules allowed: relayed without Python
    F_DENY = 4    # an IP literal the access rules refused: dropped without Python
    F_CHAIN = 8   # an IP literal a rule sends to an upstream: the whole datagram goes
                  # to the upstream's relay on ``chain_fd``, without Python


# One target, keyed by address family, address and port (network order).
cdef struct Entry:
    uint8_t addr[16]          # IPv4 in the first four bytes
    uint16_t port
    uint8_t family            # 0: empty slot, 4 or 6
    uint8_t flags
    int chain_fd              # with F_CHAIN: the socket connected to the upstream's relay


cdef class Association:
    cdef int client_fd
    cdef int out_fd[2]        # AF_INET, AF_INET6; -1 until Python opens one
    cdef uint8_t client_ip[16]  # IPv4 as ::ffff:a.b.c.d
    cdef uint16_t locked_port   # network order; 0 until the first datagram
    cdef unsigned char client_name[28]  # sockaddr replies go to
    cdef unsigned int client_namelen
    cdef Entry* table
    cdef Py_ssize_t cap
    cdef Py_ssize_t count
    cdef Py_ssize_t max_entries
    cdef object slow
    cdef bint closed
    cdef public bint gso      # UDP GSO for runs of equal datagrams (off after a refusal)
    cdef readonly uint64_t datagrams_up
    cdef readonly uint64_t datagrams_down
    cdef readonly uint64_t bytes_up
    cdef readonly uint64_t bytes_down
    cdef readonly uint64_t dropped
    cdef readonly uint64_t activity
    cdef readonly uint64_t batches

    cdef Entry* _find(self, uint8_t family, const uint8_t* addr, uint16_t port) noexcept
    cdef int _grow(self) except -1
    cdef void _queue_up(self, int fam, int* counts, const uint8_t* addr, uint16_t port,
                        const uint8_t* payload, Py_ssize_t n) noexcept
    cdef void _flush_up(self, int* counts) noexcept
    cdef void _queue_down(self, int k, void* start, size_t n, int hlen) noexcept
    cdef void _flush_chain(self, int fd, int queued) noexcept
    cdef void _flush_down(self, int queued) noexcept
