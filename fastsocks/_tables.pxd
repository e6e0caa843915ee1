# cython: language_level=3
from libc.stdint cimport uint64_t


# One inclusive range of 128-bit integers, each bound as (high word, low word).
cdef struct Span:
    uint64_t lo_h
    uint64_t lo_l
    uint64_t hi_h
    uint64_t hi_l


cdef class Spans:
    cdef Span* spans
    cdef Py_ssize_t count
    cdef readonly tuple pairs

    cdef bint has_words(self, uint64_t h, uint64_t l) noexcept nogil
    cpdef bint has(self, object n) except -1


cdef class RangeSet:
    cdef readonly Spans v4
    cdef readonly Spans v6

    cpdef bint contains(self, tuple key) except -1


# One rule of a RuleTable: what it tests, and where its tables are
# (tables[0..4]: src IPv4, src IPv6, dst IPv4, dst IPv6, ports).
cdef struct Entry:
    uint64_t commands
    bint has_src
    bint has_dst
    bint has_ports
    bint has_domain
    bint subjective
    bint allow
    bint explicit
    const Span* tables[5]
    Py_ssize_t sizes[5]


cdef class RuleTable:
    cdef Entry* entries
    cdef Py_ssize_t count
    cdef tuple keep

    cpdef Py_ssize_t first(self, int command, object client, bytes passes, bytes names, object ip,
                           int port, bint protected, tuple inner) except -2
